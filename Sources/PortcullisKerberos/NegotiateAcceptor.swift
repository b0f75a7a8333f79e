import CGSSAPI

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
    /// Done. `principal` (`alice@EXAMPLE.ORG`) is the authenticated user; `token`, when there
    /// is one, goes back on the success response (mutual authentication).
    case established(principal: String, token: [UInt8]?)
    case failed(NegotiateFailure)
}

/// A keytab the proxy cannot serve Negotiate with: `serve` refuses to start, saying why.
public struct NegotiateSetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// The proxy's side of Negotiate: an acceptor credential for every `HTTP/` key in a keytab,
/// through MIT Kerberos' GSSAPI (SPNEGO and raw Kerberos tokens alike).
///
/// ``accept(_:in:)`` blocks (it may read the keytab and the replay cache): call it on a thread
/// pool. MIT's credential handle locks internally, so one acceptor serves every connection.
public final class NegotiateAcceptor: @unchecked Sendable {
    public let keytab: String
    /// The keytab's service principals (`HTTP/proxy.example.org@EXAMPLE.ORG`), de-duplicated.
    public let servicePrincipals: [String]
    private let credential: gss_cred_id_t

    /// Reads the keytab and acquires the acceptor credential. Blocking.
    public init(keytab path: String) throws(NegotiateSetupError) {
        guard access(path, R_OK) == 0 else {
            let reason = String(cString: strerror(errno))
            throw NegotiateSetupError(description: "--keytab \(path): cannot read it (\(reason))")
        }
        let principals = try Self.principals(inKeytab: path)
        let services = principals.filter { $0.hasPrefix("HTTP/") }
        guard !services.isEmpty else {
            let held = principals.isEmpty ? "it holds no keys" : "it holds only \(principals.joined(separator: ", "))"
            throw NegotiateSetupError(
                description: "--keytab \(path): no HTTP/<host name> key, which Negotiate needs (\(held))"
            )
        }
        self.keytab = path
        self.servicePrincipals = services
        self.credential = try Self.acquireCredential(keytab: path)
    }

    deinit {
        var minor: OM_uint32 = 0
        var credential: gss_cred_id_t? = self.credential
        gss_release_cred(&minor, &credential)
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
                self.credential,
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
        // The keytab may hold other services' keys (host/…): only a ticket for an HTTP/ one is
        // a ticket for this proxy.
        let service = Self.acceptorName(context)
        guard let service, service.hasPrefix("HTTP/") else {
            context.reset()
            return .failed(
                NegotiateFailure(
                    reason: .noKeytabKey,
                    detail: "the ticket is for \(service ?? "another service"), not an HTTP/ service"
                )
            )
        }
        return .established(principal: principal, token: outputToken)
    }

    /// The service principal the client's ticket was for.
    private static func acceptorName(_ context: NegotiateContext) -> String? {
        guard let handle = context.handle else { return nil }
        var minor: OM_uint32 = 0
        var target: gss_name_t?
        guard portcullis_gss_error(gss_inquire_context(&minor, handle, nil, &target, nil, nil, nil, nil, nil)) == 0
        else { return nil }
        defer { if target != nil { gss_release_name(&minor, &target) } }
        return target.flatMap(Self.display)
    }

    // MARK: - GSSAPI and krb5 calls

    private static func acquireCredential(keytab path: String) throws(NegotiateSetupError) -> gss_cred_id_t {
        var minor: OM_uint32 = 0
        var credential: gss_cred_id_t?
        let major = "keytab".withCString { key in
            ("FILE:" + path).withCString { value in
                var element = gss_key_value_element_desc(key: key, value: value)
                return withUnsafeMutablePointer(to: &element) { element in
                    var store = gss_key_value_set_desc(count: 1, elements: element)
                    return gss_acquire_cred_from(
                        &minor,
                        nil,
                        portcullis_gss_c_indefinite(),
                        portcullis_gss_no_oid_set(),
                        gss_cred_usage_t(GSS_C_ACCEPT),
                        &store,
                        &credential,
                        nil,
                        nil
                    )
                }
            }
        }
        guard portcullis_gss_error(major) == 0, let credential else {
            throw NegotiateSetupError(
                description: "--keytab \(path): GSSAPI cannot use it: \(Self.statusText(major: major, minor: minor, mechanism: nil))"
            )
        }
        return credential
    }

    /// Every principal in the keytab, through krb5's keytab API.
    static func principals(inKeytab path: String) throws(NegotiateSetupError) -> [String] {
        var context: krb5_context?
        guard krb5_init_context(&context) == 0, let context else {
            throw NegotiateSetupError(description: "Kerberos cannot start (krb5_init_context failed; check KRB5_CONFIG)")
        }
        defer { krb5_free_context(context) }
        var keytab: krb5_keytab?
        var code = krb5_kt_resolve(context, "FILE:" + path, &keytab)
        guard code == 0, let keytab else {
            throw NegotiateSetupError(description: "--keytab \(path): \(Self.message(code, context))")
        }
        defer { krb5_kt_close(context, keytab) }
        var cursor: krb5_kt_cursor?
        code = krb5_kt_start_seq_get(context, keytab, &cursor)
        guard code == 0 else {
            throw NegotiateSetupError(description: "--keytab \(path): \(Self.message(code, context))")
        }
        defer { krb5_kt_end_seq_get(context, keytab, &cursor) }
        var names: [String] = []
        var entry = krb5_keytab_entry()
        while krb5_kt_next_entry(context, keytab, &entry, &cursor) == 0 {
            var text: UnsafeMutablePointer<CChar>?
            if krb5_unparse_name(context, entry.principal, &text) == 0, let text {
                let name = String(cString: text)
                if !names.contains(name) { names.append(name) }
                krb5_free_unparsed_name(context, text)
            }
            krb5_free_keytab_entry_contents(context, &entry)
        }
        return names
    }

    private static func message(_ code: krb5_error_code, _ context: krb5_context) -> String {
        guard let text = krb5_get_error_message(context, code) else { return "Kerberos error \(code)" }
        defer { krb5_free_error_message(context, text) }
        return String(cString: text)
    }

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
