import COpenLDAP
import Foundation

/// Why a directory operation failed: the directory could not be used (down, TLS, timeout —
/// never the user's fault), or it answered with an LDAP result code.
public struct LDAPError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Connecting, StartTLS or a timeout: the directory is not usable now.
        case unavailable
        /// The directory answered with this result code (49: invalid credentials).
        case result(Int32)
    }

    public var kind: Kind
    /// OpenLDAP's text for it; never a password (none is ever passed to it in text).
    public var detail: String

    public var description: String { self.detail }

    static func from(_ code: Int32, _ what: String) -> LDAPError {
        let text = String(cString: ldap_err2string(code))
        switch code {
        case LDAP_SERVER_DOWN, LDAP_CONNECT_ERROR, LDAP_TIMEOUT, LDAP_UNAVAILABLE, LDAP_BUSY, LDAP_TIMELIMIT_EXCEEDED:
            return LDAPError(kind: .unavailable, detail: "\(what): \(text)")
        default:
            return LDAPError(kind: .result(code), detail: "\(what): \(text)")
        }
    }
}

/// One connection to a directory through OpenLDAP's synchronous API. Every call blocks (the
/// network): callers run it on a thread pool, one thread at a time.
final class LDAPConnection {
    struct Settings: Sendable, Equatable {
        var url: String
        /// StartTLS after connecting (`ldap://`); `ldaps://` URLs are TLS from the start.
        var startTLS: Bool
        /// CA certificates (PEM) the server's certificate is verified against; nil: the system's.
        var caFile: String?
        var timeout: TimeInterval
    }

    struct Entry {
        var dn: String
        var attributes: [String: [String]]
    }

    private var handle: OpaquePointer?

    init(_ settings: Settings) throws(LDAPError) {
        var handle: OpaquePointer?
        let code = ldap_initialize(&handle, settings.url)
        guard code == LDAP_SUCCESS, let handle else { throw LDAPError.from(code, "connect to \(settings.url)") }
        self.handle = handle
        var version: Int32 = 3
        ldap_set_option(handle, LDAP_OPT_PROTOCOL_VERSION, &version)
        var off: Int32 = 0
        ldap_set_option(handle, LDAP_OPT_REFERRALS, &off)
        var timeout = timeval(
            tv_sec: Int(settings.timeout),
            tv_usec: Int(settings.timeout.truncatingRemainder(dividingBy: 1) * 1e6)
        )
        ldap_set_option(handle, LDAP_OPT_NETWORK_TIMEOUT, &timeout)
        ldap_set_option(handle, LDAP_OPT_TIMEOUT, &timeout)
        let tls = settings.startTLS || settings.url.lowercased().hasPrefix("ldaps://")
        if tls {
            var demand: Int32 = LDAP_OPT_X_TLS_DEMAND
            ldap_set_option(handle, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand)
            if let caFile = settings.caFile {
                ldap_set_option(handle, LDAP_OPT_X_TLS_CACERTFILE, caFile)
            }
            // Applies the options above to this handle's own TLS context.
            var server: Int32 = 0
            ldap_set_option(handle, LDAP_OPT_X_TLS_NEWCTX, &server)
        }
        if settings.startTLS, !settings.url.lowercased().hasPrefix("ldaps://") {
            let code = ldap_start_tls_s(handle, nil, nil)
            guard code == LDAP_SUCCESS else {
                self.close()
                // A refused StartTLS or a certificate not trusted: not usable, say why.
                throw LDAPError(
                    kind: .unavailable,
                    detail: "StartTLS with \(settings.url): " + String(cString: ldap_err2string(code))
                )
            }
        }
    }

    deinit { self.close() }

    func close() {
        guard let handle = self.handle else { return }
        ldap_unbind_ext_s(handle, nil, nil)
        self.handle = nil
    }

    /// A simple bind (RFC 4513 §5.1.3). An empty password is refused before it is sent: it would
    /// be an unauthenticated bind, which many servers accept as a success.
    func bind(dn: String, password: String) throws(LDAPError) {
        guard let handle = self.handle else { throw LDAPError(kind: .unavailable, detail: "connection closed") }
        guard !password.isEmpty else {
            throw LDAPError(kind: .result(LDAP_INVALID_CREDENTIALS), detail: "empty password")
        }
        var bytes = Array(password.utf8)
        let code = bytes.withUnsafeMutableBufferPointer { buffer -> Int32 in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) { pointer in
                var credential = berval(bv_len: ber_len_t(buffer.count), bv_val: pointer)
                return ldap_sasl_bind_s(handle, dn, nil, &credential, nil, nil, nil)
            }
        }
        // The password's bytes do not outlive the call.
        for index in bytes.indices { bytes[index] = 0 }
        guard code == LDAP_SUCCESS else { throw LDAPError.from(code, "bind") }
    }

    /// A subtree search under `base`; at most `sizeLimit` entries.
    func search(base: String, filter: String, attributes: [String], sizeLimit: Int32) throws(LDAPError) -> [Entry] {
        guard let handle = self.handle else { throw LDAPError(kind: .unavailable, detail: "connection closed") }
        var result: OpaquePointer?
        var cStrings = attributes.map { strdup($0) } + [nil]
        defer { for pointer in cStrings { free(pointer) } }
        let code = cStrings.withUnsafeMutableBufferPointer { attrs in
            ldap_search_ext_s(
                handle,
                base,
                LDAP_SCOPE_SUBTREE,
                filter,
                attrs.baseAddress,
                0,
                nil,
                nil,
                nil,
                sizeLimit,
                &result
            )
        }
        defer { if result != nil { ldap_msgfree(result) } }
        guard code == LDAP_SUCCESS || code == LDAP_SIZELIMIT_EXCEEDED else { throw LDAPError.from(code, "search") }
        var entries: [Entry] = []
        var entry = ldap_first_entry(handle, result)
        while let current = entry {
            var dn = ""
            if let text = ldap_get_dn(handle, current) {
                dn = String(cString: text)
                ldap_memfree(text)
            }
            var values: [String: [String]] = [:]
            for attribute in attributes {
                guard let list = ldap_get_values_len(handle, current, attribute) else { continue }
                var index = 0
                var strings: [String] = []
                while let value = list[index] {
                    let bytes = UnsafeRawBufferPointer(start: value.pointee.bv_val, count: Int(value.pointee.bv_len))
                    strings.append(String(decoding: bytes, as: UTF8.self))
                    index += 1
                }
                ldap_value_free_len(list)
                values[attribute] = strings
            }
            entries.append(Entry(dn: dn, attributes: values))
            entry = ldap_next_entry(handle, current)
        }
        if code == LDAP_SIZELIMIT_EXCEEDED, entries.count < Int(sizeLimit) {
            entries.append(Entry(dn: "", attributes: [:]))
        }
        return entries
    }
}
