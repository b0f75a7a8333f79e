import NIOConcurrencyHelpers
import PortcullisProxy
import PortcullisStores

/// When the TLS listeners' certificate and key are read again: when either file changed and
/// settled (two polls alike, so a certificate is never paired with half of a key being
/// written), and on SIGHUP. Blocking: runs on the thread pool.
final class TLSReloader: Sendable {
    let tls: ProxyTLS
    private let settling: NIOLockedValueBox<SettledFileChange<[FileIdentity?]>>

    init(tls: ProxyTLS) {
        self.tls = tls
        self.settling = NIOLockedValueBox(SettledFileChange(current: Self.identity(tls.files)))
    }

    /// The new pair's summary if it was loaded, `nil` if nothing changed; throws (the pair in
    /// force stays) when the new files cannot be served.
    func reload(force: Bool) throws -> String? {
        let before = Self.identity(self.tls.files)
        guard self.settling.withLockedValue({ $0.poll(before, force: force) }) else { return nil }
        // A pair that loads is a certificate with its own key, whatever was being written
        // meanwhile; anything else throws and the pair in force stays.
        return try self.tls.reload().summary
    }

    static func identity(_ files: TLSFiles) -> [FileIdentity?] {
        files.paths.map { FileIdentity(path: $0) }
    }
}
