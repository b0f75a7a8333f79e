import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A pipe for log tests: its write end goes to the code under test, and the test reads (or
/// does not read) the other end.
final class TestPipe {
    let readEnd: CInt
    let writeEnd: CInt
    private(set) var received = ""
    private var readClosed = false

    init() {
        var ends: [CInt] = [0, 0]
        precondition(pipe(&ends) == 0, "pipe: \(errno)")
        self.readEnd = ends[0]
        self.writeEnd = ends[1]
    }

    /// Reads until `done(everything read so far)` holds, or `timeout` seconds pass without a
    /// byte arriving; returns what was read.
    @discardableResult
    func read(timeout: Double = 10, until done: (String) -> Bool) -> String {
        var chunk = [UInt8](repeating: 0, count: 65536)
        var bytes = Array(self.received.utf8)
        while !done(String(decoding: bytes, as: UTF8.self)) {
            var wanted = pollfd(fd: self.readEnd, events: Int16(POLLIN), revents: 0)
            guard poll(&wanted, 1, Int32(timeout * 1000)) > 0 else { break }
            #if canImport(Glibc)
                let n = Glibc.read(self.readEnd, &chunk, chunk.count)
            #else
                let n = Darwin.read(self.readEnd, &chunk, chunk.count)
            #endif
            guard n > 0 else { break }
            bytes += chunk[..<n]
        }
        self.received = String(decoding: bytes, as: UTF8.self)
        return self.received
    }

    /// Lines read so far.
    var lines: [Substring] { self.received.split(separator: "\n") }

    func closeReadEnd() {
        guard !self.readClosed else { return }
        self.readClosed = true
        close(self.readEnd)
    }

    deinit {
        self.closeReadEnd()
    }
}
