import CoreMetrics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct LogSinkTests {
    /// Counts what a sink adds to its drop counter.
    final class CountingCounter: CounterHandler, Sendable {
        private let box = NIOLockedValueBox<Int64>(0)
        var value: Int64 { self.box.withLockedValue { $0 } }
        func increment(by amount: Int64) { self.box.withLockedValue { $0 += amount } }
        func reset() { self.box.withLockedValue { $0 = 0 } }
    }

    private static func line(_ i: Int) -> String {
        // 100 bytes with the newline.
        let text = "line \(i) "
        return text + String(repeating: "x", count: 99 - text.utf8.count) + "\n"
    }

    @Test func writingToAPipeNobodyReadsNeverBlocksDropsAreCountedAndReportedOnceItDrains() throws {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true, capacity: 64 << 10) {
            "DROPPED \($0)\n"
        }
        let counter = CountingCounter()
        sink.countDrops(in: Counter(label: "dropped", dimensions: [], handler: counter))
        // 2 MB of lines against a 64 KiB pipe and a 64 KiB queue: with blocking writes the
        // loop would never end.
        let lines = 20_000
        var accepted = 0
        let elapsed = ContinuousClock().measure {
            for i in 0..<lines {
                if sink.write(Self.line(i)) { accepted += 1 }
            }
        }
        #expect(elapsed < .seconds(2), "\(lines) writes took \(elapsed)")
        let dropped = lines - accepted
        #expect(dropped > 10_000)
        #expect(sink.droppedLines == dropped)
        #expect(counter.value == Int64(dropped))

        // Now someone reads: every accepted line arrives, whole and in order, and the reports
        // (one per stretch of drops) add up to the lines dropped.
        func reported(_ text: String) -> Int {
            text.split(separator: "\n").filter { $0.hasPrefix("DROPPED ") }.reduce(0) { $0 + Int($1.dropFirst(8))! }
        }
        func received(_ text: String) -> [Substring] {
            text.split(separator: "\n").filter { $0.hasPrefix("line ") }
        }
        let text = pipe.read { reported($0) == dropped && received($0).count == accepted && $0.hasSuffix("\n") }
        #expect(reported(text) == dropped)
        #expect(received(text).count == accepted)
        #expect(received(text).first == Self.line(0).dropLast()[...])
        #expect(received(text).allSatisfy { $0.utf8.count == 99 })
        let numbers = received(text).map { Int($0.split(separator: " ")[1])! }
        #expect(numbers == numbers.sorted())
        #expect(sink.flush(timeout: .seconds(10)))
        sink.stop(timeout: .seconds(1))
    }

    @Test func dropsBeforeTheCounterIsAttachedAreCountedToo() {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true, capacity: 10) { _ in nil }
        #expect(!sink.write("longer than ten bytes\n"))
        let counter = CountingCounter()
        sink.countDrops(in: Counter(label: "dropped", dimensions: [], handler: counter))
        #expect(counter.value == 1)
        pipe.closeReadEnd()
        sink.stop(timeout: .seconds(1))
    }

    @Test func flushWaitsForEveryLineAndLinesKeepTheirOrder() {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true)
        for i in 0..<100 { sink.write(Self.line(i)) }
        #expect(sink.flush(timeout: .seconds(10)))
        pipe.read { $0.components(separatedBy: "\n").count > 100 }
        #expect(pipe.lines == (0..<100).map { Self.line($0).dropLast()[...] })
        sink.stop(timeout: .seconds(1))
    }

    @Test func flushGivesUpAtItsTimeoutWhenNobodyReads() {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true, capacity: 256 << 10)
        for i in 0..<2_000 { sink.write(Self.line(i)) }
        let elapsed = ContinuousClock().measure {
            #expect(!sink.flush(timeout: .milliseconds(200)))
        }
        #expect(elapsed < .seconds(5))
        pipe.closeReadEnd()
        sink.stop(timeout: .seconds(1))
    }

    @Test func deferredLinesAreRenderedOnTheWriterThread() {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true)
        let caller = Self.threadID()
        let renderer = NIOLockedValueBox<UInt?>(nil)
        sink.write(estimate: 50) {
            renderer.withLockedValue { $0 = Self.threadID() }
            return "rendered\n"
        }
        #expect(sink.flush(timeout: .seconds(10)))
        #expect(pipe.read { $0.hasSuffix("\n") } == "rendered\n")
        #expect(renderer.withLockedValue { $0 } != nil)
        #expect(renderer.withLockedValue { $0 } != caller)
        sink.stop(timeout: .seconds(1))
    }

    private static func threadID() -> UInt {
        #if canImport(Glibc)
            return UInt(pthread_self())
        #else
            return UInt(bitPattern: pthread_self())
        #endif
    }

    @Test func aDeferredLineCountsItsEstimateAgainstTheCapacity() {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true, capacity: 100)
        #expect(!sink.write(estimate: 101) { "small\n" })
        #expect(sink.droppedLines == 1)
        pipe.closeReadEnd()
        sink.stop(timeout: .seconds(1))
    }

    @Test func linesAfterASwitchGoToTheNewDestination() {
        let first = TestPipe()
        let second = TestPipe()
        let sink = LogSink(fileDescriptor: first.writeEnd, ownsDescriptor: true)
        sink.write("before\n")
        #expect(sink.flush(timeout: .seconds(10)))
        sink.switchDestination(to: second.writeEnd)
        sink.write("after\n")
        #expect(sink.flush(timeout: .seconds(10)))
        // The old descriptor was closed: its reader sees the end.
        #expect(first.read { _ in false } == "before\n")
        #expect(second.read { $0.hasSuffix("\n") } == "after\n")
        sink.stop(timeout: .seconds(1))
    }

    @Test func aReaderThatGoesAwayCostsTheLinesNotTheProcess() {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true) { _ in nil }
        pipe.closeReadEnd()
        for i in 0..<10 { sink.write(Self.line(i)) }
        #expect(sink.flush(timeout: .seconds(10)))
        // EPIPE, not SIGPIPE: the test process is still here to count them.
        #expect(sink.droppedLines == 10)
        sink.stop(timeout: .seconds(1))
    }

    @Test func linesAfterStopAreDropped() {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true)
        sink.write("kept\n")
        sink.stop(timeout: .seconds(10))
        #expect(!sink.write("late\n"))
        #expect(pipe.read { _ in false } == "kept\n")
    }
}
