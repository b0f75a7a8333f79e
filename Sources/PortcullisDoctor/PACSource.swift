import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PortcullisPAC

/// Where a PAC file comes from: a file, or an `http://`/`https://` URL fetched directly (as
/// browsers fetch PAC files, never through a proxy).
public enum PACSource {
    public struct Loaded: Sendable {
        public var text: String
        /// The name errors and traces use: the file's name or the URL's path.
        public var name: String
    }

    public static func load(_ location: String, caFile: String? = nil, timeout: Double = 10) throws(PACError) -> Loaded
    {
        let lower = location.lowercased()
        if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            return try self.fetch(location, caFile: caFile, timeout: timeout)
        }
        let url = URL(fileURLWithPath: location)
        let data: Data
        do {
            let handle = try FileHandle(forReadingFrom: url)
            defer { try? handle.close() }
            data = try handle.read(upToCount: PACEvaluator.maximumSourceBytes + 1) ?? Data()
        } catch {
            throw .unreadable("cannot read \(location): \(Self.reason(error))")
        }
        guard data.count <= PACEvaluator.maximumSourceBytes else {
            throw .tooLarge(limit: PACEvaluator.maximumSourceBytes)
        }
        return Loaded(text: String(decoding: data, as: UTF8.self), name: url.lastPathComponent)
    }

    private static func reason(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain
        {
            return String(cString: strerror(Int32(underlying.code)))
        }
        if nsError.domain == NSCocoaErrorDomain, nsError.code == NSFileReadNoSuchFileError || nsError.code == 4 {
            return "no such file"
        }
        return nsError.localizedDescription
    }

    /// `location` as it may be shown: a password in it replaced by `***`.
    public static func redacted(_ location: String) -> String {
        guard let schemeEnd = location.range(of: "://") else { return location }
        let rest = location[schemeEnd.upperBound...]
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@"), let colon = rest[..<at].firstIndex(of: ":") else {
            return location
        }
        return String(location[..<colon]) + ":***" + String(rest[at...])
    }

    private static func fetch(_ location: String, caFile: String?, timeout: Double) throws(PACError) -> Loaded {
        let shown = Self.redacted(location)
        guard let components = URLComponents(string: location), let host = components.host, !host.isEmpty else {
            throw .unreadable("\(shown) is not a URL")
        }
        // Credentials in the URL are sent as Basic, as to any web server that asks for them.
        var authorization = ""
        if let user = components.user {
            let pair = "\(user.removingPercentEncoding ?? user):\(components.password?.removingPercentEncoding ?? "")"
            authorization = "Authorization: Basic \(Data(pair.utf8).base64EncodedString())\r\n"
        }
        let secure = components.scheme?.lowercased() == "https"
        let port = components.port ?? (secure ? 443 : 80)
        var path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        if let query = components.percentEncodedQuery { path += "?" + query }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let response: ProbeResponse
        do {
            let (connection, _) = try ProbeConnection.open(
                host: host,
                port: port,
                group: group,
                timeout: .nanoseconds(Int64(timeout * 1e9)),
                maximumBody: PACEvaluator.maximumSourceBytes + 1
            )
            defer { connection.close() }
            if secure {
                var configuration = TLSConfiguration.makeClientConfiguration()
                if let caFile { configuration.trustRoots = .file(caFile) }
                _ = try connection.startTLS(serverName: host, configuration: configuration)
            }
            let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            response = try connection.exchange(
                "GET \(path) HTTP/1.1\r\nHost: \(authority)\r\n\(authorization)User-Agent: portcullis-pac\r\nAccept: application/x-ns-proxy-autoconfig, */*\r\nConnection: close\r\n\r\n",
                method: "GET"
            )
        } catch {
            throw .unreadable("cannot fetch \(shown): \(error.message)")
        }
        guard response.status == 200 else {
            throw .unreadable("fetching \(shown) gave \(response.status) \(response.reason), not 200")
        }
        guard response.body.count <= PACEvaluator.maximumSourceBytes else {
            throw .tooLarge(limit: PACEvaluator.maximumSourceBytes)
        }
        return Loaded(
            text: response.bodyText,
            name: components.path.split(separator: "/").last.map(String.init) ?? host
        )
    }
}
