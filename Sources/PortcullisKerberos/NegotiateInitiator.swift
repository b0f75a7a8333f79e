import CGSSAPI

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why this machine could not make a Negotiate token for a proxy: a stable token for doctor's
/// report, with GSSAPI's own words beside it.
public enum NegotiateInitiatorFailureReason: String, Sendable, Hashable, CaseIterable {
    /// No ticket-granting ticket in the ticket cache (never `kinit`, or a cache elsewhere).
    case noTicket = "no-ticket"
    /// The ticket-granting ticket has expired.
    case ticketExpired = "ticket-expired"
    /// The KDC has no service principal for `HTTP/<that name>`: a proxy named by its IP address,
    /// an alias, or a host whose principal was never made.
    case noServicePrincipal = "no-service-principal"
    /// This machine's clock and the KDC's differ by more than Kerberos allows.
    case clockSkew = "clock-skew"
    /// No KDC of the realm answered.
    case kdcUnreachable = "kdc-unreachable"
    /// Anything else (the detail says what).
    case gssFailure = "gss-failure"
}

public struct NegotiateInitiatorFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: NegotiateInitiatorFailureReason
    /// GSSAPI's text for the major and minor status.
    public var detail: String

    public var description: String { "\(self.reason.rawValue): \(self.detail)" }

    public init(reason: NegotiateInitiatorFailureReason, detail: String) {
        self.reason = reason
        self.detail = detail
    }
}

/// What one leg of the client's side of Negotiate (RFC 4559) came to.
public enum NegotiateInitiatorStep: Sendable, Hashable {
    /// Send `token`; the proxy's answer is needed (with mutual authentication, its final token).
    case continueNeeded(token: [UInt8])
    /// The context is established; `token`, when there is one, still goes to the proxy.
    case established(token: [UInt8]?)
    case failed(NegotiateInitiatorFailure)
}

/// The client's side of Negotiate for a proxy, as curl and browsers do it: SPNEGO wrapping
/// Kerberos, the service `HTTP@<proxy host>`, mutual authentication asked for, and the caller's
/// own ticket cache (`KRB5CCNAME` or krb5.conf's default) — no password is ever involved.
///
/// Every call blocks (it reads the ticket cache and may ask the KDC for a service ticket).
/// One initiator is one handshake; it is not `Sendable`: one thread uses it.
public final class NegotiateInitiator {
    /// The service asked for, `HTTP@proxy.example.org`.
    public let service: String
    /// Whose ticket it is (`alice@EXAMPLE.ORG`).
    public let client: String
    /// Seconds the ticket-granting ticket has left.
    public let lifetime: UInt32

    private let target: gss_name_t
    /// `nil`: the default ticket cache (GSS_C_NO_CREDENTIAL), as a client's own process would.
    private var credential: gss_cred_id_t?
    private var context: gss_ctx_id_t?

    /// Checks the ticket cache, naming its ticket's principal. Blocking.
    /// - Parameters:
    ///   - host: the proxy's host name, as the client names it (no brackets, no port).
    ///   - credentialCache: a ticket cache other than the default (`FILE:/path`), for tests.
    /// - Throws: ``NegotiateInitiatorFailureReason/noTicket`` or `ticketExpired` when there is no
    ///   usable ticket-granting ticket.
    ///   - clientKeytab: a keytab with the client's own key: MIT gets (and renews) the ticket from
    ///     it by itself, into `credentialCache` (a proxy's own `MEMORY:` cache).
    public init(host: String, credentialCache: String? = nil, clientKeytab: String? = nil)
        throws(NegotiateInitiatorFailure)
    {
        let service = "HTTP@" + host
        self.service = service
        let target = try Self.importService(service)
        // The Kerberos credential itself, not SPNEGO's: only Kerberos says which cache it read
        // and whether the ticket is missing or expired (SPNEGO says "cannot find mechanisms").
        var minor: OM_uint32 = 0
        var credential: gss_cred_id_t?
        var lifetime: OM_uint32 = 0
        let store = Self.store(cache: credentialCache, clientKeytab: clientKeytab)
        let major = Self.acquire(portcullis_gss_mech_krb5(), from: store, &credential, &minor, &lifetime)
        var ignored: OM_uint32 = 0
        guard portcullis_gss_error(major) == 0, credential != nil else {
            var name: gss_name_t? = target
            gss_release_name(&ignored, &name)
            throw Self.failure(major: major, minor: minor, mechanism: portcullis_gss_mech_krb5())
        }
        // MIT hands out an expired ticket's credential with a lifetime of 0, and only using it
        // fails (while the KDC, allowing for clock skew, may still issue tickets from it).
        guard lifetime > 0 else {
            gss_release_cred(&ignored, &credential)
            var name: gss_name_t? = target
            gss_release_name(&ignored, &name)
            let (principal, cache) = Self.ticketCache(credentialCache)
            throw NegotiateInitiatorFailure(
                reason: .ticketExpired,
                detail:
                    "the ticket-granting ticket\(principal.map { " of \($0)" } ?? "") in \(cache ?? "the ticket cache") has expired"
            )
        }
        var name: gss_name_t?
        _ = gss_inquire_cred(&ignored, credential, &name, nil, nil, nil)
        self.client = name.flatMap(NegotiateAcceptor.display) ?? "?"
        if name != nil { gss_release_name(&ignored, &name) }
        gss_release_cred(&ignored, &credential)
        self.lifetime = lifetime
        self.target = target
        // Another cache needs a credential of SPNEGO's own: given the Kerberos one, SPNEGO
        // would not find its element in it and fall back to the default cache.
        var spnego: gss_cred_id_t?
        if !store.isEmpty {
            var unused: OM_uint32 = 0
            let major = Self.acquire(portcullis_gss_mech_spnego(), from: store, &spnego, &minor, &unused)
            if portcullis_gss_error(major) != 0 {
                var name: gss_name_t? = target
                gss_release_name(&ignored, &name)
                throw Self.failure(major: major, minor: minor, mechanism: portcullis_gss_mech_spnego())
            }
        }
        self.credential = spnego
    }

    deinit {
        var minor: OM_uint32 = 0
        if self.context != nil { gss_delete_sec_context(&minor, &self.context, nil) }
        if self.credential != nil { gss_release_cred(&minor, &self.credential) }
        var name: gss_name_t? = self.target
        gss_release_name(&minor, &name)
    }

    /// One leg: `nil` for the first token, then each token the proxy sent back. Blocking.
    public func step(_ input: [UInt8]?) -> NegotiateInitiatorStep {
        var minor: OM_uint32 = 0
        var output = gss_buffer_desc(length: 0, value: nil)
        var mechanism: gss_OID?
        defer {
            var ignored: OM_uint32 = 0
            gss_release_buffer(&ignored, &output)
        }
        let bytes = input ?? []
        let major = bytes.withUnsafeBytes { raw -> OM_uint32 in
            var buffer = gss_buffer_desc(length: raw.count, value: UnsafeMutableRawPointer(mutating: raw.baseAddress))
            return withUnsafeMutablePointer(to: &buffer) { buffer in
                gss_init_sec_context(
                    &minor,
                    self.credential,
                    &self.context,
                    self.target,
                    portcullis_gss_mech_spnego(),
                    OM_uint32(GSS_C_MUTUAL_FLAG),
                    0,
                    portcullis_gss_no_channel_bindings(),
                    input == nil ? nil : buffer,
                    &mechanism,
                    &output,
                    nil,
                    nil
                )
            }
        }
        if portcullis_gss_error(major) != 0 {
            if self.context != nil {
                var ignored: OM_uint32 = 0
                gss_delete_sec_context(&ignored, &self.context, nil)
                self.context = nil
            }
            return .failed(Self.failure(major: major, minor: minor, mechanism: mechanism))
        }
        let token = output.length > 0 ? NegotiateAcceptor.bytes(of: output) : nil
        if portcullis_gss_continue_needed(major) != 0 {
            return .continueNeeded(token: token ?? [])
        }
        return .established(token: token)
    }

    // MARK: - Failures

    private static func failure(major: OM_uint32, minor: OM_uint32, mechanism: gss_OID?) -> NegotiateInitiatorFailure {
        let detail = NegotiateAcceptor.statusText(major: major, minor: minor, mechanism: mechanism)
        return NegotiateInitiatorFailure(reason: Self.reason(major: major, detail: detail), detail: detail)
    }

    /// The reason for a failed call: the major status where it is precise, else the Kerberos
    /// library's text. Through SPNEGO the minor status is MIT's mechglue mapping of the Kerberos
    /// code, not the code; the text it maps to is the reliable part.
    package static func reason(major: OM_uint32, detail: String) -> NegotiateInitiatorFailureReason {
        let routine = portcullis_gss_routine_error(major)
        if routine == portcullis_gss_s_credentials_expired() { return .ticketExpired }
        let text = detail.lowercased()
        if text.contains("not found in kerberos database") { return .noServicePrincipal }
        if text.contains("cannot contact any kdc") || text.contains("cannot find kdc") { return .kdcUnreachable }
        if text.contains("clock skew") { return .clockSkew }
        if text.contains("ticket expired") || text.contains("credential has expired") { return .ticketExpired }
        if routine == portcullis_gss_s_no_cred() || text.contains("no kerberos credentials")
            || text.contains("no credentials cache") || text.contains("credentials cache file")
        {
            return .noTicket
        }
        return .gssFailure
    }

    // MARK: - GSSAPI and krb5 calls

    /// The principal and the full name of a ticket cache (`cache`, or the default one).
    private static func ticketCache(_ cache: String?) -> (principal: String?, name: String?) {
        var context: krb5_context?
        guard krb5_init_context(&context) == 0, let context else { return (nil, nil) }
        defer { krb5_free_context(context) }
        var ccache: krb5_ccache?
        let code = cache.map { krb5_cc_resolve(context, $0, &ccache) } ?? krb5_cc_default(context, &ccache)
        guard code == 0, let ccache else { return (nil, cache) }
        defer { krb5_cc_close(context, ccache) }
        var name: String?
        var text: UnsafeMutablePointer<CChar>?
        if krb5_cc_get_full_name(context, ccache, &text) == 0, let text {
            name = String(cString: text)
            krb5_free_string(context, text)
        }
        var principal: krb5_principal?
        var unparsed: UnsafeMutablePointer<CChar>?
        guard krb5_cc_get_principal(context, ccache, &principal) == 0, let principal else { return (nil, name) }
        defer { krb5_free_principal(context, principal) }
        guard krb5_unparse_name(context, principal, &unparsed) == 0, let unparsed else { return (nil, name) }
        defer { krb5_free_unparsed_name(context, unparsed) }
        return (String(cString: unparsed), name)
    }

    /// The credential store's elements (empty: the default ticket cache).
    private static func store(cache: String?, clientKeytab: String?) -> [(String, String)] {
        var elements: [(String, String)] = []
        if let cache { elements.append(("ccache", cache)) }
        if let clientKeytab { elements.append(("client_keytab", clientKeytab)) }
        return elements
    }

    /// An initiator credential for `mechanism` from `store`, or the default ticket cache.
    private static func acquire(
        _ mechanism: gss_OID,
        from store: [(String, String)],
        _ credential: inout gss_cred_id_t?,
        _ minor: inout OM_uint32,
        _ lifetime: inout OM_uint32
    ) -> OM_uint32 {
        Self.withCredentialStore(store) { store in
            var mechanisms = gss_OID_set_desc(count: 1, elements: mechanism)
            return gss_acquire_cred_from(
                &minor,
                nil,
                portcullis_gss_c_indefinite(),
                &mechanisms,
                gss_cred_usage_t(GSS_C_INITIATE),
                store,
                &credential,
                nil,
                &lifetime
            )
        }
    }

    private static func withCredentialStore(
        _ elements: [(String, String)],
        _ body: (gss_const_key_value_set_t?) -> OM_uint32
    ) -> OM_uint32 {
        guard !elements.isEmpty else { return body(nil) }
        // C strings that live through the call.
        let strings = elements.map { (strdup($0.0)!, strdup($0.1)!) }
        defer {
            for (key, value) in strings {
                free(key)
                free(value)
            }
        }
        var descriptors = strings.map { gss_key_value_element_desc(key: $0.0, value: $0.1) }
        return descriptors.withUnsafeMutableBufferPointer { buffer in
            var store = gss_key_value_set_desc(count: OM_uint32(buffer.count), elements: buffer.baseAddress)
            return withUnsafePointer(to: &store) { body($0) }
        }
    }

    private static func importService(_ service: String) throws(NegotiateInitiatorFailure) -> gss_name_t {
        var minor: OM_uint32 = 0
        var name: gss_name_t?
        let major = service.withCString { text -> OM_uint32 in
            var buffer = gss_buffer_desc(length: strlen(text), value: UnsafeMutableRawPointer(mutating: text))
            return gss_import_name(&minor, &buffer, portcullis_gss_nt_hostbased_service(), &name)
        }
        guard portcullis_gss_error(major) == 0, let name else {
            throw Self.failure(major: major, minor: minor, mechanism: nil)
        }
        return name
    }
}
