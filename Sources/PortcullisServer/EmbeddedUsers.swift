import Foundation
import PortcullisStores

/// The users file of the embedded default: created once with an `admin` user and a random
/// password, which is shown once and never again.
enum EmbeddedUsers {
    struct Created {
        var path: String
        var password: String
    }

    static let fileName = "users.htpasswd"

    /// Returns the file's path; `created` is set only when this call made the file. Blocking.
    static func ensure(dataDirectory: String) throws -> (path: String, created: Created?) {
        let path = dataDirectory + "/" + fileName
        if FileManager.default.fileExists(atPath: path) { return (path, nil) }
        do {
            try FileManager.default.createDirectory(
                atPath: dataDirectory,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700]
            )
        } catch {
            throw ServeError(
                "cannot create the data directory \(dataDirectory): \((error as NSError).localizedDescription)"
            )
        }
        let password = Self.randomPassword()
        let hash = try PasswordHash.bcrypt(password, cost: 10)
        let line = "admin:\(hash.encoded)\n"
        // O_EXCL: if another process created the file meanwhile, keep theirs and show nothing.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        if fd < 0 {
            if errno == EEXIST { return (path, nil) }
            throw ServeError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let written = line.utf8CString.withUnsafeBufferPointer { buffer in
            write(fd, buffer.baseAddress, buffer.count - 1)
        }
        guard written == line.utf8.count, fsync(fd) == 0 else {
            unlink(path)
            throw ServeError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        return (path, Created(path: path, password: password))
    }

    /// 24 characters from an alphabet that needs no percent-encoding in a proxy URL (about 140 bits).
    static func randomPassword() -> String {
        let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<24).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
    }
}
