import Foundation
import Logging
import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct SinkLogHandlerTests {
    private func logger(level: Logger.Level = .info) -> (Logger, LogSink, TestPipe) {
        let pipe = TestPipe()
        let sink = LogSink(fileDescriptor: pipe.writeEnd, ownsDescriptor: true)
        var logger = Logger(label: "portcullis") { SinkLogHandler(label: $0, sink: sink, metadataProvider: nil) }
        logger.logLevel = level
        return (logger, sink, pipe)
    }

    private func written(_ sink: LogSink, _ pipe: TestPipe) -> [Substring] {
        #expect(sink.flush(timeout: .seconds(10)))
        sink.stop(timeout: .seconds(10))
        pipe.read { _ in false }
        return pipe.lines
    }

    @Test func linesLookLikeStreamLogHandlersWithTheMetadataSorted() throws {
        var (logger, sink, pipe) = self.logger()
        logger[metadataKey: "client"] = "10.0.0.1:5000"
        logger.info("authentication failed", metadata: ["reason": "invalid-credentials", "a": "1"])
        let lines = self.written(sink, pipe)
        #expect(lines.count == 1)
        let line = String(try #require(lines.first))
        let shape = #/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} info portcullis: (.*) \[(\w+)\] (.*)$/#
        let match = try #require(line.wholeMatch(of: shape), "\(line)")
        #expect(match.1 == "a=1 client=10.0.0.1:5000 reason=invalid-credentials")
        #expect(match.2 == "PortcullisProxyTests")
        #expect(match.3 == "authentication failed")
    }

    @Test func withoutMetadataTheLineHasNone() throws {
        let (logger, sink, pipe) = self.logger()
        logger.notice("shutting down")
        let line = String(try #require(self.written(sink, pipe).first))
        #expect(line.hasSuffix(" notice portcullis: [PortcullisProxyTests] shutting down"), "\(line)")
    }

    @Test func theConfiguredLevelIsRespected() {
        let (logger, sink, pipe) = self.logger(level: .warning)
        logger.info("not shown")
        logger.debug("not shown either")
        logger.warning("shown")
        logger.error("shown too")
        let lines = self.written(sink, pipe)
        #expect(lines.count == 2)
        #expect(lines.allSatisfy { $0.hasSuffix("shown") || $0.hasSuffix("shown too") })
    }

    @Test func theDropReportIsAWarningLineWithTheCount() throws {
        let report = try #require(SinkLogHandler.dropReport(label: "portcullis")(42))
        #expect(report.hasSuffix("\n"))
        #expect(report.contains(" warning portcullis: dropped_lines=42 "))
        #expect(report.contains("42 log lines dropped"))
    }
}
