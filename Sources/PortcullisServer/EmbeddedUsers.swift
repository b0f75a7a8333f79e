import Foundation
import NIOPosix
import PortcullisStores

/// The embedded default store: `<data dir>/portcullis.db` (SQLite), created once with an `admin`
/// user and a random password that is shown once and never again. A `users.htpasswd` left in
/// the data directory by an earlier version is imported instead, so its users keep working.
enum EmbeddedUsers {
    struct Created {
        var path: String
        /// The generated admin password, or `nil` when users were imported.
        var password: String?
        var imported: Int = 0
    }

    static let databaseName = "portcullis.db"
    static let legacyFileName = "users.htpasswd"

    /// Returns the database's path; `created` is set only when this call made it. The few file
    /// system calls here block briefly (once, at start-up); the bcrypt runs on `threadPool`.
    /// - Parameter digest: also store the admin's Digest secrets (Digest is offered).
    static func ensure(
        dataDirectory: String,
        realm: String,
        digest: Bool = false,
        threadPool: NIOThreadPool = .singleton
    ) async throws -> (path: String, created: Created?) {
        let path = dataDirectory + "/" + databaseName
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
        // Built under a private name, then linked into place: another process starting at the
        // same moment either wins (we keep theirs and show nothing) or loses.
        let staging = "\(path).new-\(getpid())"
        unlink(staging)
        defer { unlink(staging) }
        var created = Created(path: path)
        do {
            let fd = open(staging, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else { throw StoreError("cannot create \(staging): \(String(cString: strerror(errno)))") }
            close(fd)
            let store = try await SQLiteStore(path: staging, realm: realm, threadPool: threadPool)
            let actor = ChangeActor(name: "portcullis serve (first run)", host: ProcessInfo.processInfo.hostName)
            let legacy = dataDirectory + "/" + legacyFileName
            if FileManager.default.fileExists(atPath: legacy) {
                let file = try HtpasswdFile.load(path: legacy)
                created.imported = try await store.importHtpasswd(file, by: actor).imported
            } else {
                let password = Self.randomPassword()
                try await store.add("admin", password: password, groups: [], cost: 10, digest: digest, by: actor)
                created.password = password
            }
        } catch let error as StoreError {
            throw ServeError(error.message)
        }
        if link(staging, path) != 0 {
            if errno == EEXIST { return (path, nil) }
            throw ServeError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        return (path, created)
    }

    /// 24 characters from an alphabet that needs no percent-encoding in a proxy URL (about 140 bits).
    static func randomPassword() -> String {
        let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<24).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
    }
}
