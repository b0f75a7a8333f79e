import NIOCore
import Testing

@testable import PortcullisProxy

/// The frame headers of what the proxy writes on an HTTP/2 connection, followed to find a GOAWAY
/// for an error (after which the connection must close, RFC 9113 §5.4.1).
@Suite struct HTTP2FrameWatchTests {
    static func frame(type: UInt8, stream: UInt32 = 0, payload: [UInt8]) -> [UInt8] {
        let length = payload.count
        return [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type, 0]
            + withUnsafeBytes(of: stream.bigEndian, Array.init) + payload
    }

    static func goAway(error: UInt32, debug: [UInt8] = []) -> [UInt8] {
        Self.frame(
            type: 7,
            payload: withUnsafeBytes(of: UInt32(5).bigEndian, Array.init)
                + withUnsafeBytes(of: error.bigEndian, Array.init) + debug
        )
    }

    static let settings = frame(type: 4, payload: [0, 3, 0, 0, 0, 100])
    static let settingsAck = frame(type: 4, payload: [])
    /// A DATA frame whose payload looks like a GOAWAY for an error: payload is never read as frames.
    static let data = frame(type: 0, stream: 1, payload: goAway(error: 1) + Array(repeating: 7, count: 40))

    /// Feeds `bytes` in pieces of `size`; the index of each piece that reported.
    private func reports(_ bytes: [UInt8], pieces size: Int) -> [Int] {
        var watch = HTTP2FrameWatch()
        var hits: [Int] = []
        var index = 0
        var start = 0
        while start < bytes.count {
            let end = min(start + size, bytes.count)
            if watch.consume(ByteBuffer(bytes: bytes[start..<end])) { hits.append(index) }
            start = end
            index += 1
        }
        return hits
    }

    @Test(arguments: [1, 2, 5, 9, 13, 1000])
    func aGoAwayForAnErrorIsFoundWhateverThePieces(size: Int) {
        let stream = Self.settings + Self.settingsAck + Self.data + Self.goAway(error: 1, debug: [1, 2, 3])
        let hits = self.reports(stream, pieces: size)
        #expect(hits.count == 1)
        // Reported with the piece that completes its error code, not before.
        let errorEnds = Self.settings.count + Self.settingsAck.count + Self.data.count + 9 + 8
        #expect(hits.first == (errorEnds - 1) / size)
    }

    @Test(arguments: [1, 4, 1000])
    func aGracefulGoAwayAndOrdinaryFramesAreNotReported(size: Int) {
        let stream = Self.settings + Self.data + Self.goAway(error: 0) + Self.settingsAck + Self.data
        #expect(self.reports(stream, pieces: size).isEmpty)
    }

    @Test func aSecondGoAwayIsNotReportedAgain() {
        #expect(self.reports(Self.goAway(error: 2) + Self.goAway(error: 11), pieces: 1000) == [0])
    }
}
