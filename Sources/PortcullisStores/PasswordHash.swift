import CCrypt
import Crypto
import Foundation
import NIOPosix
import PortcullisAuth

/// A password hash as stored in an Apache htpasswd file, and its verification.
///
/// crypt(3)-style formats (bcrypt `$2y$`/`$2b$`/`$2a$`, SHA-crypt `$5$`/`$6$`, MD5-crypt `$1$`, DES)
/// go to libxcrypt; Apache's own `$apr1$` and `{SHA}` formats have no libxcrypt method and are
/// computed here with swift-crypto's digests.
public struct PasswordHash: Sendable, Hashable {
    public enum Format: String, Sendable, Hashable {
        case bcrypt, sha256Crypt = "sha256-crypt", sha512Crypt = "sha512-crypt", md5Crypt = "md5-crypt"
        case apr1, sha1 = "sha1", desCrypt = "des-crypt"
    }

    public let encoded: String
    public let format: Format

    /// Recognises a stored hash; `nil` for plain text or unknown formats (Apache on Unix rejects
    /// plain-text passwords too).
    public init?(_ encoded: String) {
        self.encoded = encoded
        if encoded.hasPrefix("$2y$") || encoded.hasPrefix("$2b$") || encoded.hasPrefix("$2a$") {
            guard encoded.utf8.count == 60 else { return nil }
            self.format = .bcrypt
        } else if encoded.hasPrefix("$5$") {
            self.format = .sha256Crypt
        } else if encoded.hasPrefix("$6$") {
            self.format = .sha512Crypt
        } else if encoded.hasPrefix("$1$") {
            self.format = .md5Crypt
        } else if encoded.hasPrefix("$apr1$") {
            guard APR1.split(encoded) != nil else { return nil }
            self.format = .apr1
        } else if encoded.hasPrefix("{SHA}") {
            guard encoded.utf8.count == 33 else { return nil }
            self.format = .sha1
        } else if encoded.utf8.count == 13, encoded.utf8.allSatisfy(PasswordHash.isCryptChar) {
            self.format = .desCrypt
        } else {
            return nil
        }
    }

    /// Verifies a password in constant time with respect to the stored hash. Blocking and CPU-heavy
    /// (bcrypt): call it on a thread pool, never on an event loop.
    public func verify(_ password: String) -> Bool {
        let computed: [UInt8]?
        switch self.format {
        case .apr1:
            computed = APR1.hash(password: Array(password.utf8), encoded: self.encoded).map { Array($0.utf8) }
        case .sha1:
            let digest = Insecure.SHA1.hash(data: Array(password.utf8))
            computed = Array(("{SHA}" + Data(digest).base64EncodedString()).utf8)
        case .bcrypt, .sha256Crypt, .sha512Crypt, .md5Crypt, .desCrypt:
            // DES crypt only looks at 8 bytes; that weakness is the format's, and Apache's too.
            computed = LibXCrypt.crypt(password: password, setting: self.encoded).map { Array($0.utf8) }
        }
        guard let computed else { return false }
        return ConstantTime.equal(computed, Array(self.encoded.utf8))
    }

    /// A new bcrypt hash (`$2y$`, as Apache's `htpasswd -B` writes) of `password`.
    public static func bcrypt(_ password: String, cost: Int = 10) throws -> PasswordHash {
        guard let setting = LibXCrypt.gensalt(prefix: "$2b$", count: cost),
            let hashed = LibXCrypt.crypt(password: password, setting: setting),
            // Apache writes $2y$; the algorithm is the same and every reader accepts both.
            let hash = PasswordHash("$2y$" + hashed.dropFirst(4))
        else { throw PasswordHashError(message: "libxcrypt could not make a bcrypt hash") }
        return hash
    }

    static func isCryptChar(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "/"):
            return true
        default:
            return false
        }
    }
}

extension PasswordHash {
    /// Verifies on `pool`, below the event loops' priority (``ThreadPriority``): bcrypt is tens
    /// of milliseconds of CPU, which must block neither an event loop nor a thread of Swift's
    /// cooperative pool. `false` when the pool has stopped (the server is shutting down).
    public func verify(_ password: String, on pool: NIOThreadPool) async -> Bool {
        (try? await pool.runIfActive {
            ThreadPriority.enterBackground()
            return self.verify(password)
        }) ?? false
    }

    /// ``bcrypt(_:cost:)`` on `pool`.
    public static func bcrypt(_ password: String, cost: Int = 10, on pool: NIOThreadPool) async throws -> PasswordHash {
        try await pool.runIfActive {
            ThreadPriority.enterBackground()
            return try PasswordHash.bcrypt(password, cost: cost)
        }
    }
}

public struct PasswordHashError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}

/// Thread-safe calls into libxcrypt: `crypt_rn` with a per-call `crypt_data`.
enum LibXCrypt {
    static func crypt(password: String, setting: String) -> String? {
        let size = MemoryLayout<crypt_data>.size
        let data = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: MemoryLayout<crypt_data>.alignment)
        data.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        defer {
            // The work area held the password; do not leave it in freed memory.
            data.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            data.deallocate()
        }
        guard let result = crypt_rn(password, setting, data, Int32(size)) else { return nil }
        let text = String(cString: result)
        // libxcrypt returns a string starting with "*" for an invalid setting.
        return text.hasPrefix("*") ? nil : text
    }

    static func gensalt(prefix: String, count: Int) -> String? {
        var output = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        guard crypt_gensalt_rn(prefix, UInt(count), nil, 0, &output, Int32(output.count)) != nil else { return nil }
        return output.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}
