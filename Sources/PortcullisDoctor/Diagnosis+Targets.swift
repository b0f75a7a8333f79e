import Foundation

extension Diagnosis {
    // MARK: - 6. Plain HTTP targets

    mutating func checkHTTPTargets() throws(Pending) -> Bool {
        guard !self.setup.httpTargets.isEmpty else {
            self.report.add("http", .skip, "no http:// target")
            return true
        }
        var failures: [String] = []
        var lines: [String] = []
        var verdict: DoctorReport.Verdict = .targetFailed
        var totalMs = 0.0
        for target in self.setup.httpTargets {
            let response: RecordedResponse
            if let first = self.firstAuthenticated, first.target.url == target.url {
                response = first.response
            } else {
                let (result, ms) = try self.authenticatedSend(target, connection: .reuse)
                switch result {
                case .success(let received):
                    response = received
                    totalMs += ms
                case .failure(let error):
                    failures.append("\(target.url): \(error.message)")
                    self.recordTarget(target, .fail, nil, error.message)
                    continue
                }
            }
            let (status, message, targetVerdict) = Self.classifyTarget(response, target: target)
            self.recordTarget(target, status, response.status, message, nextHop: Self.nextHop(response))
            if status == .fail {
                failures.append("\(target.url): \(message)")
                if targetVerdict == .denied { verdict = .denied }
            } else {
                lines.append("\(target.url): \(message)")
            }
        }
        if !failures.isEmpty {
            return self.report.fail(
                "http",
                verdict,
                failures.joined(separator: "; "),
                fix: verdict == .denied
                    ? "credentials are fine; ask the proxy's admins to allow this destination"
                    : "the proxy could not fetch the target: check the URL, and that the proxy can reach it (its DNS, its firewall)",
                ms: totalMs
            )
        }
        self.report.add("http", .pass, lines.joined(separator: "; "), ms: totalMs > 0 ? totalMs : nil)
        return true
    }

    private mutating func recordTarget(
        _ target: DoctorTarget,
        _ status: DoctorReport.Status,
        _ httpStatus: Int?,
        _ message: String,
        nextHop: String? = nil
    ) {
        self.report.targets.append(
            DoctorReport.Target(
                url: target.url,
                viaProxy: true,
                status: status,
                httpStatus: httpStatus,
                message: message,
                nextHop: nextHop
            )
        )
    }

    static func classifyTarget(
        _ response: RecordedResponse,
        target: DoctorTarget
    ) -> (DoctorReport.Status, String, DoctorReport.Verdict?) {
        switch response.status {
        case 403:
            return (.fail, "the proxy forbids it (403): not a password problem\(self.reasonSuffix(response))", .denied)
        case 502, 503, 504:
            return (
                .fail,
                "the proxy could not get it (\(response.status) \(response.reason))\(self.reasonSuffix(response))",
                .targetFailed
            )
        default:
            let parent = Self.nextHop(response).map { " and its parent proxy \($0)" } ?? ""
            return (.pass, "\(response.status) \(response.reason) through the proxy\(parent)", nil)
        }
    }

    // MARK: - 7. Tunnels

    mutating func checkTunnels() throws(Pending) -> Bool {
        guard !self.setup.httpsTargets.isEmpty else {
            self.report.add("tunnel", .skip, "no https:// target")
            return true
        }
        var failures: [(String, DoctorReport.Verdict, String)] = []
        var warnings: [String] = []
        var lines: [String] = []
        var totalMs = 0.0
        for target in self.setup.httpsTargets {
            var ms = 0.0
            var reused: RecordedResponse?
            // The handshake on the tunnel of the authentication step, when it was still open.
            var handshake: (error: ProbeError?, ms: Double)?
            if let first = self.firstAuthenticated, first.target.url == target.url {
                if first.response.status / 100 != 2 {
                    reused = first.response
                } else {
                    let tried = try self.handshake(serverName: target.host)
                    // A tunnel gone before the handshake is opened again, with a new CONNECT.
                    if tried.0?.kind != .closed {
                        reused = first.response
                        handshake = (tried.0, tried.ms)
                    }
                }
            }
            let response: RecordedResponse
            if let reused {
                response = reused
            } else {
                let (result, sendMs) = try self.authenticatedSend(target, connection: .new)
                switch result {
                case .success(let received):
                    response = received
                    ms += sendMs
                case .failure(let error):
                    failures.append(("\(target.url): \(error.message)", .targetFailed, "check that the proxy is up"))
                    self.recordTarget(target, .fail, nil, error.message)
                    continue
                }
            }
            switch response.status {
            case 200..<300:
                if handshake == nil {
                    let tried = try self.handshake(serverName: target.host)
                    handshake = (tried.0, tried.ms)
                }
                ms += handshake?.ms ?? 0
                if let error = handshake?.error {
                    if error.kind == .tlsUntrusted {
                        let message = "CONNECT \(target.requestTarget): \(response.status), but \(error.message)"
                        warnings.append(message)
                        self.recordTarget(target, .warn, response.status, message)
                    } else {
                        failures.append(
                            (
                                "CONNECT \(target.requestTarget): \(response.status), then \(error.message)",
                                .targetFailed,
                                "the tunnel opened but TLS through it failed: the target may not speak TLS on that port"
                            )
                        )
                        self.recordTarget(target, .fail, response.status, error.message)
                    }
                } else {
                    let tlsMs = handshake?.ms ?? 0
                    let parent = Self.nextHop(response).map { " through the parent proxy \($0)" } ?? ""
                    let message =
                        "CONNECT \(target.requestTarget): \(response.status)\(parent), TLS handshake \(String(format: "%.1f", tlsMs)) ms"
                    lines.append(message)
                    self.recordTarget(
                        target,
                        self.setup.insecure ? .warn : .pass,
                        response.status,
                        message,
                        nextHop: Self.nextHop(response)
                    )
                    if self.setup.insecure {
                        warnings.append("--insecure: \(target.host)'s certificate was not verified")
                    }
                }
            case 403:
                let message =
                    "the proxy refused CONNECT to port \(target.port) of \(target.host) (403): not a password problem\(Self.reasonSuffix(response))"
                failures.append(
                    (
                        message, .denied,
                        "the proxy allows CONNECT only to some ports (often just 443); use a target on an allowed port or ask its admins"
                    )
                )
                self.recordTarget(target, .fail, 403, message)
            case 407, 401:
                let message =
                    "the proxy asks for credentials again on CONNECT (\(response.status)) although it accepted them for plain HTTP\(Self.reasonSuffix(response))"
                failures.append(
                    (message, .authFailed, "some proxies use other rules for CONNECT; ask the proxy's admins")
                )
                self.recordTarget(target, .fail, response.status, message)
            default:
                let message =
                    "the proxy could not open a tunnel to \(target.requestTarget) (\(response.status) \(response.reason))\(Self.reasonSuffix(response))"
                failures.append(
                    (message, .targetFailed, "check that the target host and port are reachable from the proxy")
                )
                self.recordTarget(target, .fail, response.status, message)
            }
            totalMs += ms
        }
        if let first = failures.first {
            return self.report.fail(
                "tunnel",
                first.1,
                failures.map(\.0).joined(separator: "; "),
                fix: first.2,
                ms: totalMs
            )
        }
        if !warnings.isEmpty {
            self.report.add(
                "tunnel",
                .warn,
                (lines + warnings).joined(separator: "; "),
                fix:
                    "pass --cacert FILE for a private CA; if the proxy intercepts TLS, its CA must be in this machine's trust store",
                ms: totalMs
            )
            return true
        }
        self.report.add("tunnel", .pass, lines.joined(separator: "; "), ms: totalMs)
        return true
    }
}
