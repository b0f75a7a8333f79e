import CGSSAPI
import Foundation
import Testing

/// The KDC that `scripts/kdc-test-server.sh run` started, if any. Under
/// `PORTCULLIS_REQUIRE_KDC=1` (CI) a missing one is a failure, never a skip.
enum TestKDC {
    static let environment = ProcessInfo.processInfo.environment
    static let keytab = environment["PORTCULLIS_TEST_KRB5_KEYTAB"]
    static let wrongKeytab = environment["PORTCULLIS_TEST_KRB5_WRONG_KEYTAB"]
    static let user = environment["PORTCULLIS_TEST_KRB5_USER"] ?? "alice"
    static let password = environment["PORTCULLIS_TEST_KRB5_PASSWORD"] ?? ""
    static let realm = environment["PORTCULLIS_TEST_KRB5_REALM"] ?? ""
    static let required = environment["PORTCULLIS_REQUIRE_KDC"] == "1"
    static var isAvailable: Bool { keytab != nil || required }

    /// A ticket cache of its own holding the test user's ticket-granting ticket, from `kinit`
    /// (the tool a user runs): `FILE:/tmp/…`. The process's own cache (KRB5CCNAME) is untouched.
    static func ticketCache() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("portcullis-\(UUID()).ccache").path
        let kinit = Process()
        kinit.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        kinit.arguments = ["kinit", user]
        kinit.environment = environment.merging(["KRB5CCNAME": "FILE:" + path]) { $1 }
        let input = Pipe()
        kinit.standardInput = input
        kinit.standardOutput = FileHandle.nullDevice
        try kinit.run()
        input.fileHandleForWriting.write(Data((password + "\n").utf8))
        try input.fileHandleForWriting.close()
        kinit.waitUntilExit()
        guard kinit.terminationStatus == 0 else { throw KinitFailed(status: kinit.terminationStatus) }
        return "FILE:" + path
    }

    struct KinitFailed: Error {
        var status: Int32
    }
}

/// A Kerberos client through the same GSSAPI library: credentials from a password (no ticket
/// cache is touched), then the initiator's tokens for `HTTP@host`. Raw Kerberos as well as
/// SPNEGO, which `NegotiateInitiator` (doctor's, SPNEGO from a ticket cache) does not offer.
final class TestInitiator {
    private var credential: gss_cred_id_t?
    private var context: gss_ctx_id_t?
    private let target: gss_name_t
    private let mechanism: gss_OID_desc

    enum Mechanism { case kerberos, spnego }

    init(user: String, password: String, service: String = "HTTP@localhost", mechanism: Mechanism) throws {
        var minor: OM_uint32 = 0
        self.mechanism = Self.oid(mechanism == .kerberos ? [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02] : [0x2b, 0x06, 0x01, 0x05, 0x05, 0x02])
        self.target = try Self.importName(service, type: portcullis_gss_nt_hostbased_service())
        let userName = try Self.importName(user, type: portcullis_gss_nt_user_name())
        defer {
            var name: gss_name_t? = userName
            gss_release_name(&minor, &name)
        }
        var credential: gss_cred_id_t?
        var desired = self.mechanism
        let major = password.withCString { text -> OM_uint32 in
            var buffer = gss_buffer_desc(length: strlen(text), value: UnsafeMutableRawPointer(mutating: text))
            return withUnsafeMutablePointer(to: &desired) { desired in
                // A credential for the mechanism the tokens will use (SPNEGO needs its own).
                var mechanisms = gss_OID_set_desc(count: 1, elements: desired)
                return gss_acquire_cred_with_password(
                    &minor, userName, &buffer, portcullis_gss_c_indefinite(), &mechanisms,
                    gss_cred_usage_t(GSS_C_INITIATE), &credential, nil, nil
                )
            }
        }
        guard portcullis_gss_error(major) == 0 else { throw InitiatorError(step: "acquire_cred_with_password", major: major, minor: minor) }
        self.credential = credential
    }

    deinit {
        var minor: OM_uint32 = 0
        if context != nil { gss_delete_sec_context(&minor, &context, nil) }
        if credential != nil { gss_release_cred(&minor, &credential) }
        var name: gss_name_t? = target
        gss_release_name(&minor, &name)
    }

    /// The next token (the first when `input` is nil); `complete` once the context is established.
    func step(_ input: [UInt8]?) throws -> (token: [UInt8], complete: Bool) {
        var minor: OM_uint32 = 0
        var output = gss_buffer_desc(length: 0, value: nil)
        defer { gss_release_buffer(&minor, &output) }
        var mechanism = self.mechanism
        let bytes = input ?? []
        let major = bytes.withUnsafeBytes { raw -> OM_uint32 in
            var buffer = gss_buffer_desc(length: raw.count, value: UnsafeMutableRawPointer(mutating: raw.baseAddress))
            return withUnsafeMutablePointer(to: &buffer) { buffer in
                gss_init_sec_context(
                    &minor, self.credential, &self.context, self.target, &mechanism,
                    OM_uint32(GSS_C_MUTUAL_FLAG), 0, portcullis_gss_no_channel_bindings(),
                    input == nil ? nil : buffer, nil, &output, nil, nil
                )
            }
        }
        guard portcullis_gss_error(major) == 0 else { throw InitiatorError(step: "init_sec_context", major: major, minor: minor) }
        let token = output.length > 0 ? Array(UnsafeRawBufferPointer(start: output.value, count: output.length)) : []
        return (token, portcullis_gss_continue_needed(major) == 0)
    }

    private static func importName(_ text: String, type: gss_OID) throws -> gss_name_t {
        var minor: OM_uint32 = 0
        var name: gss_name_t?
        let major = text.withCString { c -> OM_uint32 in
            var buffer = gss_buffer_desc(length: strlen(c), value: UnsafeMutableRawPointer(mutating: c))
            return gss_import_name(&minor, &buffer, type, &name)
        }
        guard portcullis_gss_error(major) == 0, let name else { throw InitiatorError(step: "import_name", major: major, minor: minor) }
        return name
    }

    private static func oid(_ bytes: [UInt8]) -> gss_OID_desc {
        // Kept for the process's life: the OID's bytes must outlive every call that uses it.
        let storage = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 1)
        storage.copyMemory(from: bytes, byteCount: bytes.count)
        return gss_OID_desc(length: OM_uint32(bytes.count), elements: storage)
    }
}

struct InitiatorError: Error, CustomStringConvertible {
    var step: String
    var major: OM_uint32
    var minor: OM_uint32
    var description: String { "gss_\(step) failed: major \(major), minor \(Int32(bitPattern: minor))" }
}
