import PortcullisAuth
import Testing

@testable import PortcullisDoctor

/// Runs doctor's loop with hand-written outcomes in place of the network: the diagnosis picks
/// each action, the next outcome of the list answers it.
struct TranscriptReplay {
    var report: DoctorReport?
    var transcript = ProbeTranscript()
    /// Outcomes the diagnosis never asked for.
    var unused = 0

    var requests: [ProbeRequest] {
        self.transcript.records.compactMap {
            if case .send(let request) = $0.action { return request }
            return nil
        }
    }

    init(_ setup: DoctorSetup, _ outcomes: [ProbeOutcome]) {
        var outcomes = outcomes[...]
        while true {
            switch Diagnosis.next(setup, self.transcript) {
            case .done(let report):
                self.report = report
                self.unused = outcomes.count
                return
            case .needs(let action):
                guard let outcome = outcomes.popFirst() else { return }
                self.transcript.append(action, outcome, ms: 1)
            case .diverged:
                return
            }
        }
    }

    /// The report, after checking that it used every outcome and no more.
    func complete(sourceLocation: SourceLocation = #_sourceLocation) throws -> DoctorReport {
        let report = try #require(self.report, "the diagnosis wanted more records", sourceLocation: sourceLocation)
        #expect(self.unused == 0, "\(self.unused) outcomes were never asked for", sourceLocation: sourceLocation)
        return report
    }
}

enum Fixture {
    static let password = "s3cret-Pa55"

    static func setup(
        proxy: String? = "http://alice:s3cret-Pa55@127.0.0.1:3128",
        targets: [String] = ["http://origin.test/x"],
        scheme: DoctorOptions.SchemeChoice = .auto,
        environment: [String: String] = [:]
    ) -> DoctorSetup {
        var options = DoctorOptions()
        options.proxy = proxy
        options.targets = targets
        options.scheme = scheme
        options.environment = environment
        return DoctorSetup.resolve(options).setup
    }

    static let opened = ProbeOutcome.opened(.init(dnsMs: 0.1, connectMs: 0.2, address: "127.0.0.1"), tlsMs: nil)

    static func response(_ status: Int, _ fields: (String, String)...) -> ProbeOutcome {
        .response(RecordedResponse(status: status, reason: "Scripted", fields: fields))
    }

    static func challenge(_ values: String...) -> ProbeOutcome {
        .response(RecordedResponse(status: 407, fields: values.map { ("Proxy-Authenticate", $0) }))
    }

    static let ok = response(200, ("Via", "1.1 proxy"))

    static func step(_ report: DoctorReport, _ name: String) -> DoctorReport.Step? {
        report.steps.first { $0.name == name }
    }

    static func outcome(_ report: DoctorReport) -> String? { report.authentication?.outcome }
}
