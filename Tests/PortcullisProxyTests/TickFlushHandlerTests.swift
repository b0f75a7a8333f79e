import NIOCore
import NIOEmbedded
import Testing

@testable import PortcullisProxy

/// Flushes held to the end of the event loop's pass: many become one, none is lost.
@Suite struct TickFlushHandlerTests {
    /// Counts the flushes that reach the front of the pipeline.
    final class FlushCounter: ChannelOutboundHandler {
        typealias OutboundIn = NIOAny
        var flushes = 0
        func flush(context: ChannelHandlerContext) {
            self.flushes += 1
            context.flush()
        }
    }

    @Test func flushesInOnePassLeaveAsOneAfterIt() throws {
        let counter = FlushCounter()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(TickFlushHandler())
        for index in 0..<50 {
            channel.write(ByteBuffer(string: "r\(index)"), promise: nil)
            channel.flush()
        }
        // Nothing has left yet: the writes wait for the flush at the end of the pass.
        #expect(counter.flushes == 0)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.embeddedEventLoop.run()
        #expect(counter.flushes == 1)
        var written = [String]()
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { written.append(String(buffer: buffer)) }
        #expect(written == (0..<50).map { "r\($0)" })
        // A later flush is a new pass of its own.
        channel.writeAndFlush(ByteBuffer(string: "late"), promise: nil)
        channel.embeddedEventLoop.run()
        #expect(counter.flushes == 2)
        #expect(try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "late")
        _ = try channel.finish()
    }

    @Test func aFlushPendingWhenTheChannelClosesIsHarmless() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(TickFlushHandler())
        channel.writeAndFlush(ByteBuffer(string: "x"), promise: nil)
        _ = try? channel.finish()
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }
}
