import CGSSAPI
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why a Negotiate token was not accepted: a token for the log, the metrics and the 407's body.
/// Never the client's token or anything derived from it.
public enum NegotiateFailureReason: String, Sendable, Hashable, CaseIterable {
    /// Any other GSSAPI failure (the detail names major and minor status).
    case gssFailure = "gss-failure"
    /// The client's clock and ours differ by more than the allowed skew (5 minutes by default).
    case clockSkew = "clock-skew"
    /// The ticket is for a key the keytab does not hold: a wrong or stale keytab (the KDC's key
    /// was changed), or a service principal the keytab lacks.
    case noKeytabKey = "no-keytab-key"
    /// Neither Kerberos nor SPNEGO-wrapped Kerberos (NTLMSSP inside Negotiate, for example).
    case unsupportedMechanism = "unsupported-mechanism"
}

public struct NegotiateFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: NegotiateFailureReason
    /// GSSAPI's own words for the major and minor status.
    public var detail: String

    public var description: String { "\(self.reason.rawValue): \(self.detail)" }

    public init(reason: NegotiateFailureReason, detail: String) {
        self.reason = reason
        self.detail = detail
    }
}

/// What one leg of a Negotiate handshake (RFC 4559) came to.
public enum NegotiateStep: Sendable, Hashable {
    /// Another leg is needed: send `token` in a 407's `Proxy-Authenticate: Negotiate`.
    case continueNeeded(token: [UInt8])
    /// Done. `principal` (`alice@EXAMPLE.ORG`) is the authenticated user; `localName` is what
    /// krb5.conf's `auth_to_local` rules make of it (by default `alice` for a one-component
    /// principal of the default realm, nothing for another realm's); `token`, when there is
    /// one, goes back on the success response (mutual authentication).
    case established(principal: String, localName: String?, token: [UInt8]?)
    case failed(NegotiateFailure)
}

/// A keytab the proxy cannot serve Negotiate with: `serve` refuses to start, saying why.
public struct NegotiateSetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// The proxy's side of Negotiate: acceptor credentials for the `HTTP/` keys of a keytab,
/// through MIT Kerberos' GSSAPI (SPNEGO and raw Kerberos tokens alike).
///
/// ``accept(_:in:)`` blocks (it may read the replay cache and, when the file changed, the
/// keytab): call it on a thread pool.
///
/// Two things MIT would otherwise do on every accept are done once here. The keytab's `HTTP/`
/// keys are copied into a `MEMORY:` keytab, so an accept reads no file for them (a `FILE:`
/// keytab is opened, locked, read and closed per accept); the file is checked for a change at
/// most every `keytabCheckInterval`, and a changed file that still holds an `HTTP/` key is
/// loaded for new handshakes (keytab rotation needs no restart). And there are `credentials`
/// acquired credentials, one per thread of the pool that calls `accept`: MIT holds a
/// credential's mutex for the whole of an accept, so one shared credential runs one accept at a
/// time however many threads call it.
public final class NegotiateAcceptor: Sendable {
    public let keytab: String
    private let credentialCount: Int
    private let keytabCheckInterval: Duration
    private let onKeytabChange: @Sendable (Result<[String], NegotiateSetupError>) -> Void
    private let state: Mutex<State>

    private struct State {
        var keys: KeytabCredentials
        var checkedAt: ContinuousClock.Instant
        /// A changed file that could not be loaded: not tried (nor reported) again until it changes.
        var refused: FileStamp?
    }

    /// Reads the keytab and acquires the acceptor credentials. Blocking.
    ///
    /// - Parameters:
    ///   - credentials: how many accepts may run at once without waiting for each other (the
    ///     calling pool's thread count); more callers share them.
    ///   - keytabCheckInterval: how often an accept may look whether the file changed.
    ///   - onKeytabChange: told, on the accepting thread, of each changed file: its service
    ///     principals once loaded, or why it was refused (the previous keys stay in use).
    public init(
        keytab path: String,
        credentials: Int = 1,
        keytabCheckInterval: Duration = .seconds(1),
        onKeytabChange: @escaping @Sendable (Result<[String], NegotiateSetupError>) -> Void = { _ in }
    ) throws(NegotiateSetupError) {
        let keys = try KeytabCredentials(keytab: path, count: max(1, credentials))
        self.keytab = path
        self.credentialCount = max(1, credentials)
        self.keytabCheckInterval = keytabCheckInterval
        self.onKeytabChange = onKeytabChange
        self.state = Mutex(State(keys: keys, checkedAt: .now, refused: nil))
    }

    /// The service principals of the keys in use (`HTTP/proxy.example.org@EXAMPLE.ORG`).
    public var servicePrincipals: [String] {
        self.state.withLock { $0.keys.servicePrincipals }
    }

    /// A handshake's state on one client connection.
    public func makeContext() -> NegotiateContext { NegotiateContext() }

    /// One leg: the client's token in, the next token or the outcome out. Blocking.
    public func accept(_ token: [UInt8], in context: NegotiateContext) -> NegotiateStep {
        // An empty token would make SPNEGO start a server-initiated exchange: never what a
        // proxy's client means.
        guard !token.isEmpty else {
            context.reset()
            return .failed(NegotiateFailure(reason: .gssFailure, detail: "the Negotiate token is empty"))
        }
        let keys = self.currentKeys()
        let credential = keys.borrow()
        defer { keys.giveBack(credential) }
        var minor: OM_uint32 = 0
        var name: gss_name_t?
        var mechanism: gss_OID?
        var output = gss_buffer_desc(length: 0, value: nil)
        defer {
            var ignored: OM_uint32 = 0
            gss_release_buffer(&ignored, &output)
            if name != nil { gss_release_name(&ignored, &name) }
        }
        let major = token.withUnsafeBytes { bytes -> OM_uint32 in
            var input = gss_buffer_desc(length: bytes.count, value: UnsafeMutableRawPointer(mutating: bytes.baseAddress))
            return gss_accept_sec_context(
                &minor,
                &context.handle,
                credential.handle,
                &input,
                portcullis_gss_no_channel_bindings(),
                &name,
                &mechanism,
                &output,
                nil,
                nil,
                nil
            )
        }
        let outputToken = output.length > 0 ? Self.bytes(of: output) : nil
        if portcullis_gss_error(major) != 0 {
            context.reset()
            return .failed(Self.failure(major: major, minor: minor, mechanism: mechanism))
        }
        if portcullis_gss_continue_needed(major) != 0 {
            return .continueNeeded(token: outputToken ?? [])
        }
        guard let name, let principal = Self.display(name) else {
            context.reset()
            return .failed(NegotiateFailure(reason: .gssFailure, detail: "the client's name could not be read"))
        }
        // Only a ticket for an HTTP/ service can get here: the keys in use are only those.
        let localName = credential.context.flatMap { KeytabCredentials.localName(of: principal, in: $0) }
        return .established(principal: principal, localName: localName, token: outputToken)
    }

    /// The keys to accept with: the loaded ones, or the keytab file's new ones when it changed
    /// since the last look (at most one look per `keytabCheckInterval`).
    private func currentKeys() -> KeytabCredentials {
        let now = ContinuousClock.now
        let (keys, due, refused) = self.state.withLock { state in
            guard now - state.checkedAt >= self.keytabCheckInterval else { return (state.keys, false, state.refused) }
            state.checkedAt = now
            return (state.keys, true, state.refused)
        }
        guard due else { return keys }
        let stamp = FileStamp(path: self.keytab)
        guard stamp != keys.stamp, stamp != refused else { return keys }
        do {
            let fresh = try KeytabCredentials(keytab: self.keytab, count: self.credentialCount)
            self.state.withLock { state in
                state.keys = fresh
                state.refused = nil
            }
            self.onKeytabChange(.success(fresh.servicePrincipals))
            return fresh
        } catch {
            self.state.withLock { $0.refused = stamp }
            self.onKeytabChange(.failure(error))
            return keys
        }
    }

    // MARK: - GSSAPI status

    private static func failure(major: OM_uint32, minor: OM_uint32, mechanism: gss_OID?) -> NegotiateFailure {
        let detail = Self.statusText(major: major, minor: minor, mechanism: mechanism)
        let routine = portcullis_gss_routine_error(major)
        let code = Int32(bitPattern: minor)
        let reason: NegotiateFailureReason
        switch code {
        case Int32(KRB5KRB_AP_ERR_SKEW):
            reason = .clockSkew
        case Int32(KRB5KRB_AP_ERR_BAD_INTEGRITY), Int32(KRB5_KT_NOTFOUND), Int32(KRB5_KT_KVNONOTFOUND),
            Int32(KRB5KRB_AP_ERR_NOKEY), Int32(KRB5KRB_AP_WRONG_PRINC), Int32(KRB5KRB_AP_ERR_BADKEYVER),
            Int32(KRB5KRB_AP_ERR_MODIFIED), Int32(KRB5KRB_AP_ERR_NOT_US):
            reason = .noKeytabKey
        default:
            // Through SPNEGO the minor status is MIT's mechglue mapping of the Kerberos code, not
            // the code itself; the text it maps to is the Kerberos library's, which says which.
            let text = detail.lowercased()
            if routine == portcullis_gss_s_bad_mech() {
                reason = .unsupportedMechanism
            } else if text.contains("clock skew") {
                reason = .clockSkew
            } else if text.contains("keytab") || text.contains("integrity check failed")
                || text.contains("wrong principal")
            {
                reason = .noKeytabKey
            } else {
                reason = .gssFailure
            }
        }
        return NegotiateFailure(reason: reason, detail: detail)
    }

    /// GSSAPI's text for a major status and, when set, the mechanism's for the minor one.
    static func statusText(major: OM_uint32, minor: OM_uint32, mechanism: gss_OID?) -> String {
        var parts = Self.display(status: major, type: GSS_C_GSS_CODE, mechanism: nil)
        if minor != 0 {
            parts += Self.display(status: minor, type: GSS_C_MECH_CODE, mechanism: mechanism)
        }
        return parts.joined(separator: "; ")
    }

    private static func display(status: OM_uint32, type: Int32, mechanism: gss_OID?) -> [String] {
        var out: [String] = []
        var more: OM_uint32 = 0
        repeat {
            var minor: OM_uint32 = 0
            var text = gss_buffer_desc(length: 0, value: nil)
            let major = gss_display_status(&minor, status, type, mechanism, &more, &text)
            defer { gss_release_buffer(&minor, &text) }
            guard portcullis_gss_error(major) == 0 else { break }
            out.append(String(decoding: Self.bytes(of: text), as: UTF8.self))
        } while more != 0 && out.count < 8
        return out
    }

    static func display(_ name: gss_name_t) -> String? {
        var minor: OM_uint32 = 0
        var text = gss_buffer_desc(length: 0, value: nil)
        guard portcullis_gss_error(gss_display_name(&minor, name, &text, nil)) == 0 else { return nil }
        defer { gss_release_buffer(&minor, &text) }
        return String(decoding: Self.bytes(of: text), as: UTF8.self)
    }

    static func bytes(of buffer: gss_buffer_desc) -> [UInt8] {
        guard let value = buffer.value, buffer.length > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: value, count: buffer.length))
    }
}

/// One connection's handshake state (a GSSAPI security context), deleted when the connection
/// is done with it. Used by one thread at a time: the connection runs one leg at once.
public final class NegotiateContext: @unchecked Sendable {
    fileprivate var handle: gss_ctx_id_t?

    fileprivate init() {}

    /// Forgets a failed or finished handshake, so the next token starts a new one.
    fileprivate func reset() {
        guard self.handle != nil else { return }
        var minor: OM_uint32 = 0
        gss_delete_sec_context(&minor, &self.handle, nil)
        self.handle = nil
    }

    deinit {
        self.reset()
    }
}
