import Foundation
import PortcullisAuth
import PortcullisKerberos

/// The doctor's judgement: a pure function from a ``DoctorSetup`` and a ``ProbeTranscript`` to
/// the ``DoctorReport``. No socket, no clock: every time it reports is one the probe recorded.
///
/// It also decides what the probe does next. Walking the steps of docs/DOCTOR.md over the
/// records so far, it either reaches the end (the report) or needs a record the transcript does
/// not hold yet: that record's action is the next one to carry out. ``Doctor`` is the loop
/// "ask ``next(_:_:)`` → perform → record"; a unit test is the same loop over hand-written
/// outcomes, so the order of requests is tested along with the verdict.
struct Diagnosis {
    enum Progress {
        case needs(ProbeAction)
        case done(DoctorReport)
        /// The record at `index` is not what diagnosis does there (another action, or an
        /// outcome of another kind): the transcript belongs to another setup or is mistyped.
        case diverged(index: Int, expected: ProbeAction)
    }

    /// The next action to carry out, or the report when the transcript is complete.
    static func next(_ setup: DoctorSetup, _ transcript: ProbeTranscript) -> Progress {
        var diagnosis = Diagnosis(setup: setup, records: transcript.records)
        do throws(Pending) {
            return .done(try diagnosis.run())
        } catch {
            switch error {
            case .needs(let action): return .needs(action)
            case .diverged(let index, let expected): return .diverged(index: index, expected: expected)
            }
        }
    }

    /// The report of a complete transcript; `nil` when the transcript stops short or diverges.
    static func report(_ setup: DoctorSetup, _ transcript: ProbeTranscript) -> DoctorReport? {
        guard case .done(let report) = self.next(setup, transcript) else { return nil }
        return report
    }

    enum Pending: Error {
        case needs(ProbeAction)
        case diverged(index: Int, expected: ProbeAction)
    }

    /// The scheme doctor answers with.
    enum ChosenScheme: Equatable {
        case basic
        case digest(DigestChallenge)
        case ntlm
        case negotiate

        var name: String {
            switch self {
            case .basic: return "Basic"
            case .digest: return "Digest"
            case .ntlm: return "NTLM"
            case .negotiate: return "Negotiate"
            }
        }

        /// Whether a handshake authenticates the connection rather than each request.
        var isConnectionBound: Bool { self == .ntlm || self == .negotiate }
    }

    let setup: DoctorSetup
    private let records: [ProbeRecord]
    private var cursor = 0
    var report: DoctorReport

    // What the steps learn.
    var offered: [Challenge] = []
    var offeredField = "Proxy-Authenticate"
    var chosen: ChosenScheme?
    var authRequired = true
    var nonceCount = 0
    /// The first Kerberos leg, made by the scheme step when the proxy offers Negotiate.
    var kerberosStart: KerberosOutcome?
    /// Whose Kerberos ticket answers Negotiate.
    var principal: String?
    /// The response to the authenticated request of the authentication step, for the first target.
    var firstAuthenticated: (target: DoctorTarget, response: RecordedResponse)?

    private init(setup: DoctorSetup, records: [ProbeRecord]) {
        self.setup = setup
        self.records = records
        self.report = setup.report
    }

    var firstTarget: DoctorTarget? { self.setup.httpTargets.first ?? self.setup.httpsTargets.first }

    /// Runs every step after configuration in order; a failing step ends the run and the later
    /// ones are skipped.
    private mutating func run() throws(Pending) -> DoctorReport {
        var stopped: String?
        if !self.setup.proceeds { stopped = self.stopReason(after: "configuration") }
        for name in ["reachability", "challenge", "scheme", "authentication", "http", "tunnel"] {
            if let reason = stopped {
                self.report.add(name, .skip, reason)
                continue
            }
            let goesOn: Bool
            switch name {
            case "reachability": goesOn = try self.checkReachability()
            case "challenge": goesOn = try self.checkChallenge()
            case "scheme": goesOn = try self.checkScheme()
            case "authentication": goesOn = try self.checkAuthentication()
            case "http": goesOn = try self.checkHTTPTargets()
            default: goesOn = try self.checkTunnels()
            }
            if !goesOn { stopped = self.stopReason(after: name) }
        }
        if self.report.summary.isEmpty {
            let name = (self.chosen == .negotiate ? self.principal : nil) ?? self.setup.user
            let who = name.map { "user \"\($0)\"" } ?? "this client"
            let authority = self.setup.proxy?.authority ?? "?"
            if !self.authRequired {
                self.report.summary = "the proxy at \(authority) lets requests through without credentials"
            } else if let chosen {
                self.report.summary = "the proxy at \(authority) accepts \(who) (\(chosen.name))"
            } else {
                self.report.summary = "every target bypasses the proxy"
            }
        }
        return self.report
    }

    private func stopReason(after name: String) -> String {
        self.report.verdict == .ok
            ? "not needed: no target goes through the proxy"
            : "not tried after the \(self.report.steps.last?.name ?? name) step failed"
    }

    // MARK: - Reading the transcript

    /// The next record, which must be `action`'s.
    private mutating func take(_ action: ProbeAction) throws(Pending) -> ProbeRecord {
        guard self.cursor < self.records.count else { throw .needs(action) }
        let record = self.records[self.cursor]
        guard record.action == action else { throw .diverged(index: self.cursor, expected: action) }
        self.cursor += 1
        return record
    }

    private func mistyped(_ action: ProbeAction) -> Pending {
        .diverged(index: self.cursor - 1, expected: action)
    }

    /// The connection to the proxy: its timings (and TLS time for an https:// proxy), or why not.
    mutating func open() throws(Pending) -> Result<(ProbeConnection.Timings, tlsMs: Double?), ProbeError> {
        let record = try self.take(.open)
        switch record.outcome {
        case .opened(let timings, let tlsMs): return .success((timings, tlsMs))
        case .failed(let error): return .failure(error)
        case .response, .handshake, .kerberos: throw self.mistyped(.open)
        }
    }

    /// The response to `request`, or why there is none; with the exchange's time.
    mutating func send(_ request: ProbeRequest) throws(Pending) -> (Result<RecordedResponse, ProbeError>, ms: Double) {
        let record = try self.take(.send(request))
        switch record.outcome {
        case .response(let response): return (.success(response), record.elapsedMs)
        case .failed(let error): return (.failure(error), record.elapsedMs)
        case .opened, .handshake, .kerberos: throw self.mistyped(.send(request))
        }
    }

    /// Sends `request`; one the proxy did not answer fails `step` as unreachable (the message
    /// names the request, `what` says how it was sent) and gives `nil`.
    mutating func sendOrFail(
        _ request: ProbeRequest,
        step: String,
        what: String,
        fix: String
    ) throws(Pending) -> (response: RecordedResponse, ms: Double)? {
        let (result, ms) = try self.send(request)
        switch result {
        case .success(let response):
            if let finding = Self.speaksTLSFinding(response: response, error: nil, setup: self.setup) {
                _ = self.fail(step, with: finding, ms: ms)
                return nil
            }
            return (response, ms)
        case .failure(let error):
            if let finding = Self.proxyTLSFinding(error, setup: self.setup)
                ?? Self.speaksTLSFinding(response: nil, error: error, setup: self.setup)
            {
                _ = self.fail(step, with: finding, ms: ms)
                return nil
            }
            _ = self.report.fail(
                step,
                .proxyUnreachable,
                "\(request.method) \(request.requestTarget) \(what): \(error.message)",
                fix: fix
            )
            return nil
        }
    }

    /// The TLS handshake through the last tunnel: `nil` when it succeeded, else why not; with its time.
    mutating func handshake(serverName: String) throws(Pending) -> (ProbeError?, ms: Double) {
        let record = try self.take(.handshake(serverName: serverName))
        switch record.outcome {
        case .handshake: return (nil, record.elapsedMs)
        case .failed(let error): return (error, record.elapsedMs)
        case .opened, .response, .kerberos: throw self.mistyped(.handshake(serverName: serverName))
        }
    }

    /// What the Kerberos initiator made of a leg for `HTTP@host` (`token` `nil`: a new handshake).
    mutating func kerberos(host: String, token: [UInt8]?) throws(Pending) -> KerberosOutcome {
        let action = ProbeAction.kerberos(host: host, token: token)
        let record = try self.take(action)
        switch record.outcome {
        case .kerberos(let outcome): return outcome
        case .failed(let error): return .failed(NegotiateInitiatorFailure(reason: .gssFailure, detail: error.message))
        case .opened, .response, .handshake: throw self.mistyped(action)
        }
    }

    // MARK: - 2. Reachability

    private mutating func checkReachability() throws(Pending) -> Bool {
        guard let proxy = self.setup.proxy else { return false }
        switch try self.open() {
        case .success(let (timings, tlsMs)):
            var message =
                "\(proxy.authority): DNS \(String(format: "%.1f", timings.dnsMs)) ms, TCP connect \(String(format: "%.1f", timings.connectMs)) ms"
            var details: [String: JSONValue] = [
                "address": .string(timings.address),
                "dns_ms": .number(timings.dnsMs),
                "connect_ms": .number(timings.connectMs),
            ]
            if let tls = tlsMs {
                message += ", TLS \(String(format: "%.1f", tls)) ms"
                details["tls_ms"] = .number(tls)
            }
            self.report.add(
                "reachability",
                .pass,
                message,
                ms: timings.dnsMs + timings.connectMs + (tlsMs ?? 0),
                details: details
            )
            return true
        case .failure(let error):
            if let finding = Self.proxyTLSFinding(error, setup: self.setup) {
                return self.fail("reachability", with: finding)
            }
            let fix: String
            switch error.kind {
            case .resolution:
                fix = "check the proxy host name (and this machine's DNS); a typo in HTTP_PROXY shows up here"
            case .refused:
                fix = "nothing listens on \(proxy.authority): check that the proxy runs, and the port in the proxy URL"
            case .timeout:
                fix = "check that a firewall lets this machine reach \(proxy.authority), and that the proxy is up"
            case .tls, .tlsUntrusted:
                fix =
                    "an https:// proxy URL needs a proxy that speaks TLS on that port (most proxies take http:// even for https targets); for a private CA pass --proxy-cacert FILE"
            case .localFile:
                return self.report.fail(
                    "reachability",
                    .configError,
                    error.message,
                    fix: "--proxy-cacert and --proxy-cert take PEM certificates, --proxy-key an unencrypted PEM key"
                )
            default: fix = "check the proxy address"
            }
            return self.report.fail("reachability", .proxyUnreachable, error.message, fix: fix)
        }
    }
}
