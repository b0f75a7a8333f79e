import CGSSAPI
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What identifies one version of a file: a rewrite or a rename over it changes it.
struct FileStamp: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: Int64
    var changed: Int64

    /// A missing or unreadable file has a stamp of its own (all zero), so its return is a change.
    init(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            self.device = 0
            self.inode = 0
            self.size = -1
            self.modified = 0
            self.changed = 0
            return
        }
        self.device = UInt64(info.st_dev)
        self.inode = UInt64(info.st_ino)
        self.size = Int64(info.st_size)
        self.modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        self.changed = Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec)
    }
}

/// One load of a keytab file: its `HTTP/` keys copied into a `MEMORY:` keytab of this process,
/// and acceptor credentials on it, lent to one accept at a time each with a krb5 context of
/// its own (for the principal's local name: GSSAPI's `gss_localname` would build a dozen
/// contexts, each reading krb5.conf's status, per call).
final class KeytabCredentials: @unchecked Sendable {
    /// An acquired credential and a context, this accept's own unless every one was taken.
    struct Lent {
        var handle: gss_cred_id_t
        /// Used by one thread at a time: krb5 contexts are not thread-safe.
        var context: krb5_context?
        /// Its place in `all`; nil when shared (the context is then a copy of its own).
        fileprivate var index: Int?
    }

    let stamp: FileStamp
    let servicePrincipals: [String]
    private let all: [gss_cred_id_t]
    private let contexts: [krb5_context]
    /// Indices into `all` of the credentials no accept holds.
    private let free: Mutex<[Int]>
    // The MEMORY: keytab lives while a handle on it is open: ours, and the credentials'.
    private let context: krb5_context
    private let memory: krb5_keytab

    private static let loads = Atomic<Int>(0)

    /// Reads the keytab file and acquires `count` credentials. Blocking.
    init(keytab path: String, count: Int) throws(NegotiateSetupError) {
        // Stamped before reading: a change while we read is seen at the next look.
        self.stamp = FileStamp(path: path)
        guard access(path, R_OK) == 0 else {
            let reason = String(cString: strerror(errno))
            throw NegotiateSetupError(description: "--keytab \(path): cannot read it (\(reason))")
        }
        var context: krb5_context?
        guard krb5_init_context(&context) == 0, let context else {
            throw NegotiateSetupError(description: "Kerberos cannot start (krb5_init_context failed; check KRB5_CONFIG)")
        }
        let load = Self.loads.wrappingAdd(1, ordering: .relaxed).newValue
        let memoryName = "MEMORY:portcullis-\(getpid())-\(load)"
        var memory: krb5_keytab?
        let code = krb5_kt_resolve(context, memoryName, &memory)
        guard code == 0, let memory else {
            let text = Self.message(code, context)
            krb5_free_context(context)
            throw NegotiateSetupError(description: "Kerberos cannot make an in-memory keytab: \(text)")
        }
        var acquired: [gss_cred_id_t] = []
        var contexts: [krb5_context] = []
        do throws(NegotiateSetupError) {
            let (services, others) = try Self.copyServiceKeys(from: path, into: memory, context: context)
            guard !services.isEmpty else {
                let held = others.isEmpty ? "it holds no keys" : "it holds only \(others.joined(separator: ", "))"
                throw NegotiateSetupError(
                    description: "--keytab \(path): no HTTP/<host name> key, which Negotiate needs (\(held))"
                )
            }
            for _ in 0..<max(1, count) {
                acquired.append(try Self.acquireCredential(keytab: memoryName, file: path))
                contexts.append(try Self.makeContext())
            }
            self.servicePrincipals = services
        } catch {
            for credential in acquired { Self.release(credential) }
            for lent in contexts { krb5_free_context(lent) }
            krb5_kt_close(context, memory)
            krb5_free_context(context)
            throw error
        }
        self.all = acquired
        self.contexts = contexts
        self.free = Mutex(Array(acquired.indices))
        self.context = context
        self.memory = memory
    }

    deinit {
        for credential in self.all { Self.release(credential) }
        for context in self.contexts { krb5_free_context(context) }
        krb5_kt_close(self.context, self.memory)
        krb5_free_context(self.context)
    }

    /// A credential no other accept is using; when all are in use, the first one, which MIT's
    /// own lock serialises.
    func borrow() -> Lent {
        if let index = self.free.withLock({ $0.popLast() }) {
            return Lent(handle: self.all[index], context: self.contexts[index], index: index)
        }
        // A context cannot be shared: a copy of the one only `init` and `deinit` use (made
        // without reading krb5.conf). Without one, no local name: the user keeps the principal.
        var copy: krb5_context?
        if krb5_copy_context(self.context, &copy) != 0 { copy = nil }
        return Lent(handle: self.all[0], context: copy, index: nil)
    }

    func giveBack(_ lent: Lent) {
        guard let index = lent.index else {
            if let context = lent.context { krb5_free_context(context) }
            return
        }
        self.free.withLock { $0.append(index) }
    }

    /// What krb5.conf's `auth_to_local` rules map `principal` to (by default: a one-component
    /// principal of the default realm to its name), or nil.
    static func localName(of principal: String, in context: krb5_context) -> String? {
        var parsed: krb5_principal?
        guard krb5_parse_name(context, principal, &parsed) == 0, let parsed else { return nil }
        defer { krb5_free_principal(context, parsed) }
        var buffer = [CChar](repeating: 0, count: 512)
        guard krb5_aname_to_localname(context, parsed, Int32(buffer.count - 1), &buffer) == 0 else { return nil }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - krb5 and GSSAPI calls

    /// Copies the file's `HTTP/` entries (every key version and encryption type) into `memory`;
    /// returns their principals and the file's other ones, de-duplicated.
    private static func copyServiceKeys(
        from path: String,
        into memory: krb5_keytab,
        context: krb5_context
    ) throws(NegotiateSetupError) -> (services: [String], others: [String]) {
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
        var services: [String] = []
        var others: [String] = []
        var entry = krb5_keytab_entry()
        while true {
            code = krb5_kt_next_entry(context, keytab, &entry, &cursor)
            if code == KRB5_KT_END { break }
            guard code == 0 else {
                throw NegotiateSetupError(description: "--keytab \(path): \(Self.message(code, context))")
            }
            defer { krb5_free_keytab_entry_contents(context, &entry) }
            var text: UnsafeMutablePointer<CChar>?
            guard krb5_unparse_name(context, entry.principal, &text) == 0, let text else { continue }
            let name = String(cString: text)
            krb5_free_unparsed_name(context, text)
            guard name.hasPrefix("HTTP/") else {
                if !others.contains(name) { others.append(name) }
                continue
            }
            code = krb5_kt_add_entry(context, memory, &entry)
            guard code == 0 else {
                throw NegotiateSetupError(description: "--keytab \(path): cannot copy \(name)'s key: \(Self.message(code, context))")
            }
            if !services.contains(name) { services.append(name) }
        }
        return (services, others)
    }

    private static func acquireCredential(keytab name: String, file path: String) throws(NegotiateSetupError) -> gss_cred_id_t {
        var minor: OM_uint32 = 0
        var credential: gss_cred_id_t?
        let major = "keytab".withCString { key in
            name.withCString { value in
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
            let text = NegotiateAcceptor.statusText(major: major, minor: minor, mechanism: nil)
            throw NegotiateSetupError(description: "--keytab \(path): GSSAPI cannot use it: \(text)")
        }
        return credential
    }

    private static func makeContext() throws(NegotiateSetupError) -> krb5_context {
        var context: krb5_context?
        guard krb5_init_context(&context) == 0, let context else {
            throw NegotiateSetupError(description: "Kerberos cannot start (krb5_init_context failed; check KRB5_CONFIG)")
        }
        return context
    }

    private static func release(_ credential: gss_cred_id_t) {
        var minor: OM_uint32 = 0
        var handle: gss_cred_id_t? = credential
        gss_release_cred(&minor, &handle)
    }

    private static func message(_ code: krb5_error_code, _ context: krb5_context) -> String {
        guard let text = krb5_get_error_message(context, code) else { return "Kerberos error \(code)" }
        defer { krb5_free_error_message(context, text) }
        return String(cString: text)
    }
}
