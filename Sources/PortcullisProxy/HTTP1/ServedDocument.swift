import NIOCore

/// A file the proxy serves itself on its listeners, to anyone, without credentials: the PAC
/// file (`serve --pac`), at `/proxy.pac` and `/wpad.dat`.
public struct ServedDocument: Sendable, Equatable {
    public var bytes: [UInt8]
    /// A strong entity tag, quoted (`"…"`), for `If-None-Match`.
    public var etag: String
    public var contentType: String

    public static let pacContentType = "application/x-ns-proxy-autoconfig"
    /// The origin-form paths a PAC file is served at (browsers' WPAD looks for `/wpad.dat`).
    public static let pacPaths: Set<String> = ["/proxy.pac", "/wpad.dat"]

    public init(bytes: [UInt8], etag: String, contentType: String = ServedDocument.pacContentType) {
        self.bytes = bytes
        self.etag = etag
        self.contentType = contentType
    }

    /// Whether an origin-form target names a served path (a query is ignored, as by static
    /// file servers).
    static func isServedPath(_ target: String) -> Bool {
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return Self.pacPaths.contains(String(path))
    }

    /// The response to a GET (or a HEAD, `headOnly`) with the request's `If-None-Match` values: 304 when one of them
    /// is this document's tag (or `*`), else 200 with the document (headers only for HEAD).
    func response(headOnly: Bool, ifNoneMatch: [String]) -> ProxyResponse {
        let tags = ifNoneMatch.flatMap { $0.split(separator: ",") }.map {
            var tag = $0.trimmingCharacters(in: .whitespaces)
            if tag.hasPrefix("W/") { tag.removeFirst(2) }
            return tag
        }
        let notModified = tags.contains(self.etag) || tags.contains("*")
        var response = ProxyResponse(
            status: notModified ? .notModified : .ok,
            proxyError: nil,
            details: nil,
            message: "",
            extraHeaders: [("ETag", self.etag)]
        )
        response.document = ProxyResponse.Document(
            bytes: self.bytes,
            contentType: self.contentType,
            sendsBody: !notModified && !headOnly
        )
        return response
    }
}
