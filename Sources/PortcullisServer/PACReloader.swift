import Crypto
import Foundation
import NIOConcurrencyHelpers
import PortcullisPAC
import PortcullisProxy
import PortcullisStores

/// The PAC file `serve --pac` serves: loaded and checked at start-up, read again when it changed
/// and settled (two polls alike) and on SIGHUP. A file is served only once it loads in the
/// bounded evaluator and answers the probe URLs with a string; otherwise the previous one stays.
/// Blocking (file reads, a child process): runs on the thread pool.
final class PACReloader: Sendable {
    let path: String
    private let settling: NIOLockedValueBox<SettledFileChange<FileIdentity>>

    /// URLs every served file must answer. Evaluated without DNS: a check that depends on the
    /// network would refuse a good file on a bad day.
    static let probes = ["http://www.example.com/", "https://www.example.com/"]

    init(path: String) {
        self.path = path
        self.settling = NIOLockedValueBox(SettledFileChange(current: FileIdentity(path: path)))
    }

    /// The new document if the file changed and passed its check, nil if it did not change;
    /// throws (the document in force stays) when it fails.
    func reload(force: Bool) throws -> ServedDocument? {
        let identity = FileIdentity(path: self.path)
        guard self.settling.withLockedValue({ $0.poll(identity, force: force) }) else { return nil }
        return try Self.load(path: self.path)
    }

    static func load(path: String) throws -> ServedDocument {
        let data: Data
        do {
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            data = try handle.read(upToCount: PACEvaluator.maximumSourceBytes + 1) ?? Data()
        } catch {
            throw ServeError("cannot read the PAC file \(path)")
        }
        guard data.count <= PACEvaluator.maximumSourceBytes else {
            throw ServeError("the PAC file \(path) is larger than \(PACEvaluator.maximumSourceBytes) bytes")
        }
        let evaluator = PACEvaluator(environment: PACEnvironment(myAddresses: ["192.0.2.1"], useDNS: false))
        let run = evaluator.evaluate(
            source: String(decoding: data, as: UTF8.self),
            filename: URL(fileURLWithPath: path).lastPathComponent,
            targets: Self.probes.compactMap { PACTarget(url: $0) }
        )
        if let error = run.loadError { throw ServeError("the PAC file \(path) fails: \(error)") }
        for (url, outcome) in zip(Self.probes, run.outcomes) {
            if case .failure(let error) = outcome {
                throw ServeError("the PAC file \(path) fails for \(url): \(error)")
            }
        }
        let digest = SHA256.hash(data: data)
        let tag = digest.prefix(12).map { String(format: "%02x", $0) }.joined()
        return ServedDocument(bytes: Array(data), etag: "\"\(tag)\"")
    }
}
