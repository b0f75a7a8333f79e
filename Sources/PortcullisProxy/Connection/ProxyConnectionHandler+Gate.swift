import NIOCore
import PortcullisKerberos
import PortcullisStores

// Carries out what the 407 gate (``GateStateMachine``) decides for each request: starts the
// password checks and secrets lookups it asks for off the event loop (the verifier's store
// calls, answered back on this loop), waits out its delays, hands it their completions, and
// ends each request in exactly one of ``ProxyConnectionHandler/gateAllowed(_:)`` or
// ``ProxyConnectionHandler/gateRefused(_:close:)``.
extension ProxyConnectionHandler {
    /// The request's target is parsed: through the gate.
    func startGate(_ exchange: ProxyExchange, target: RequestTarget) {
        let request = GateStateMachine.Request(
            head: exchange.head,
            target: target,
            started: exchange.started,
            clientAddress: self.clientAddress
        )
        let action = self.gate.startRequest(request, in: self.gateEnvironment)
        self.carryOut(action, for: exchange)
    }

    /// The exchange ended without the gate: what the gate still waits for is not wanted any more.
    func cancelGate() {
        self.gate.cancel()
    }

    /// The connection closed: nor is a Negotiate/NTLM handshake it was in the middle of.
    func closeGate() {
        self.gate.connectionClosed(in: self.gateEnvironment)
        self.negotiateContext = nil
    }

    private var gateEnvironment: ConnectionGateEnvironment { ConnectionGateEnvironment(connection: self) }

    /// Completions come back with the id of their wait: one the gate no longer waits for
    /// (the client left) gets `.none` from it, so `exchange` is only acted on while current.
    private func carryOut(_ action: GateStateMachine.Action, for exchange: ProxyExchange) {
        switch action {
        case .allow(let record, let authenticationInfo):
            self.record(record, on: exchange)
            exchange.authenticationInfo = authenticationInfo
            self.gateAllowed(exchange)
        case .refuse(let record, let response, let close):
            self.record(record, on: exchange)
            self.gateRefused(response, close: close)
        case .verifyBasic(let id, let credentials, let key):
            // The gate asks for checks only when authentication is on, which needs a verifier.
            guard let verifier = self.shared.verifier else { return self.cannotCheck() }
            verifier.verify(credentials, key: key, on: self.context.eventLoop)
                .assumeIsolated()
                .whenSuccess { outcome in
                    // Also after the client left: the throttle learns every check's outcome.
                    let next = self.gate.basicCheckFinished(
                        id,
                        outcome: outcome,
                        now: self.currentTime,
                        in: self.gateEnvironment
                    )
                    self.carryOut(next, for: exchange)
                }
        case .lookUpDigestSecrets(let id, let key):
            guard let verifier = self.shared.verifier else { return self.cannotCheck() }
            verifier.digestSecrets(key, on: self.context.eventLoop)
                .assumeIsolated()
                .whenSuccess { lookup in
                    let next = self.gate.digestSecretsFound(
                        id,
                        lookup: lookup,
                        now: self.currentTime,
                        in: self.gateEnvironment
                    )
                    self.carryOut(next, for: exchange)
                }
        case .acceptNegotiate(let id, let token):
            guard let acceptor = self.shared.negotiate else { return self.cannotCheck() }
            let context = self.negotiateContext ?? acceptor.makeContext()
            self.negotiateContext = context
            // GSSAPI reads the keytab and the replay cache: never on an event loop.
            self.shared.threadPool.runIfActive(eventLoop: self.context.eventLoop) {
                acceptor.accept(token, in: context)
            }
            .assumeIsolated()
            .whenComplete { result in
                let step: NegotiateStep
                switch result {
                case .success(let answer): step = answer
                case .failure:
                    step = .failed(NegotiateFailure(reason: .gssFailure, detail: "the proxy is shutting down"))
                }
                // A security context serves one handshake: once it is established (or failed), a
                // later token on the connection — libcurl sends a new one with every request — is
                // a new handshake; fed to the finished context it was refused as invalid.
                if case .continueNeeded = step {} else { self.negotiateContext = nil }
                let next = self.gate.negotiateLegFinished(id, step: step, in: self.gateEnvironment)
                self.carryOut(next, for: exchange)
            }
        case .lookUpGroups(let id, let name, let user):
            guard let directory = self.shared.directoryGroups else {
                return self.carryOut(self.gate.groupsFound(id, in: self.gateEnvironment), for: exchange)
            }
            let promise = self.context.eventLoop.makePromise(of: Void.self)
            promise.completeWithTask { await directory.lookUpGroups(name: name, keptAs: user) }
            promise.futureResult.assumeIsolated().whenComplete { _ in
                let next = self.gate.groupsFound(id, in: self.gateEnvironment)
                self.carryOut(next, for: exchange)
            }
        case .lookUpAccount(let id, let name):
            guard let verifier = self.shared.verifier else { return self.cannotCheck() }
            verifier.account(named: name, on: self.context.eventLoop)
                .assumeIsolated()
                .whenSuccess { lookup in
                    let next = self.gate.accountFound(id, lookup: lookup, in: self.gateEnvironment)
                    self.carryOut(next, for: exchange)
                }
        case .lookUpNTLMSecrets(let id, let name):
            guard let verifier = self.shared.verifier else { return self.cannotCheck() }
            verifier.ntlmSecrets(name: name, on: self.context.eventLoop)
                .assumeIsolated()
                .whenSuccess { lookup in
                    let next = self.gate.ntlmSecretsFound(
                        id,
                        lookup: lookup,
                        now: self.currentTime,
                        in: self.gateEnvironment
                    )
                    self.carryOut(next, for: exchange)
                }
        case .verifyNTLM(let id, let pending, let current, let previous):
            guard let verifier = self.shared.verifier else { return self.cannotCheck() }
            verifier.verifyNTLM(pending, current: current, previous: previous, on: self.context.eventLoop)
                .assumeIsolated()
                .whenComplete { result in
                    let next = self.gate.ntlmVerified(
                        id,
                        try? result.get(),
                        now: self.currentTime,
                        in: self.gateEnvironment
                    )
                    self.carryOut(next, for: exchange)
                }
        case .wait(let id, let delay):
            self.context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
                let next = self.gate.delayElapsed(id, in: self.gateEnvironment)
                self.carryOut(next, for: exchange)
            }
        case .none:
            break
        }
    }

    /// A check asked for without a verifier to run it (not a configuration `serve` builds): a 503
    /// rather than a request left waiting.
    private func cannotCheck() {
        self.gateRefused(
            ProxyResponse(
                status: .serviceUnavailable,
                proxyError: nil,
                details: "unavailable",
                message: "the proxy cannot check credentials right now."
            ),
            close: false
        )
    }

    /// What the access log and the metrics say of the request's authentication.
    private func record(_ record: GateStateMachine.Record, on exchange: ProxyExchange) {
        exchange.user = record.user
        exchange.otherName = record.otherName
        exchange.token = record.token
        exchange.credentialExpiresIn = record.expiresIn
        exchange.authScheme = record.scheme
        exchange.authResult = record.result
    }
}
