import Foundation
import NIOCore
import Testing

@testable import PortcullisProxy

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite struct AccessLogTests {
    private static func record(_ i: Int) -> AccessRecord {
        AccessRecord(
            start: Date(timeIntervalSince1970: 1_700_000_000 + Double(i)),
            durationMs: 3,
            client: "127.0.0.1",
            user: "alice",
            authScheme: "basic",
            authResult: "ok",
            method: "GET",
            target: "http://example.com/\(i)",
            status: 200,
            bytesFromClient: 80,
            bytesToClient: 1024,
            upstream: "93.184.216.34",
            contentType: "text/html",
            proxyStatus: nil,
            isTunnel: false
        )
    }

    @Test func aRequestThroughAParentIsLoggedAsSquidLogsItsParents() {
        var direct = Self.record(1)
        #expect(direct.squidLine.contains(" HIER_DIRECT/93.184.216.34 "))
        #expect(direct.jsonLine.contains(#""parent":null"#))
        direct.parent = "proxy.corp:3128"
        direct.upstream = "10.1.2.3"
        #expect(direct.squidLine.contains(" FIRSTUP_PARENT/10.1.2.3 "))
        #expect(direct.jsonLine.contains(#""upstream":"10.1.2.3","parent":"proxy.corp:3128""#))
    }

    private static func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("access-log-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    @Test func aDestinationNobodyReadsNeverHoldsUpTheWriterAndDropsAreCounted() throws {
        let pipe = TestPipe()
        defer { close(pipe.writeEnd) }
        // The pipe by path, as `--access-log /dev/stdout` with stdout a pipe would be.
        let log = try AccessLog(path: "/dev/fd/\(pipe.writeEnd)", format: .squid, capacity: 64 << 10)
        let records = 20_000
        let elapsed = ContinuousClock().measure {
            for i in 0..<records { log.write(Self.record(i)) }
        }
        // A writer held up by the pipe would never finish; the bound is generous for a loaded
        // machine (this took 26 s once with the load average at 7 on 2 cores: still ~1 ms a record).
        #expect(elapsed < .seconds(60), "\(records) records took \(elapsed)")
        #expect(log.droppedLines > records / 2)
        #expect(!log.flush(timeout: .milliseconds(100)))
        // Reading again, the lines come through whole, in Squid's format.
        let text = pipe.read { $0.split(separator: "\n").count > 100 }
        #expect(text.hasPrefix("1700000000.000      3 127.0.0.1 TCP_MISS/200 1024 GET http://example.com/0 alice"))
        pipe.closeReadEnd()
    }

    @Test func afterReopenLinesGoToTheFileUnderItsName() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("access.log").path
        let log = try AccessLog(path: path, format: .json)
        log.write(Self.record(1))
        #expect(log.flush(timeout: .seconds(10)))
        let rotated = path + ".1"
        try FileManager.default.moveItem(atPath: path, toPath: rotated)
        try log.reopen()
        log.write(Self.record(2))
        #expect(log.flush(timeout: .seconds(10)))
        let old = try String(contentsOfFile: rotated, encoding: .utf8)
        let new = try String(contentsOfFile: path, encoding: .utf8)
        #expect(old.split(separator: "\n").count == 1 && old.contains("http://example.com/1"))
        #expect(new.split(separator: "\n").count == 1 && new.contains("http://example.com/2"))
    }

    @Test func anUnwritablePathIsAnErrorThatNamesIt() {
        #expect(throws: AccessLogError.self) {
            try AccessLog(path: "/nonexistent-dir/access.log", format: .squid)
        }
    }
}
