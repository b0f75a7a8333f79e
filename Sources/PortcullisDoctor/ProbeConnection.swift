import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// A response as doctor needs it: status, header fields in order, and the start of the body.
public struct ProbeResponse: Sendable {
    public var status: Int
    public var reason: String
    public var headers: [(name: String, value: String)]
    /// At most the handler's `maximumBody` bytes of the body.
    public var body: [UInt8]
    public var keepAlive: Bool

    public func values(_ name: String) -> [String] {
        self.headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    public var bodyText: String { String(decoding: self.body, as: UTF8.self) }
}

/// Why a network step failed, in words a user can act on.
public struct ProbeError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable {
        case resolution, refused, timeout, tls, tlsUntrusted, closed, protocolError, other
        /// A file this client was given (`--proxy-cacert`, `--proxy-cert`, `--proxy-key`) cannot be used.
        case localFile
    }

    public var kind: Kind
    public var message: String
    /// What the peer sent, when it explains the failure: a TLS failure's reasons and bytes, or
    /// the first bytes of an answer that is not HTTP.
    var evidence: TLSEvidence? = nil
    public var description: String { self.message }
}

/// One TCP (optionally TLS) connection to a proxy, driven step by step from a caller's
/// thread: doctor is a short-lived CLI, so blocking on each step's future keeps it simple.
final class ProbeConnection {
    let channel: any Channel
    /// The channel's probe handler, used only on the channel's loop.
    let handler: NIOLoopBound<ProbeHandler>
    /// The copy of the peer's first bytes, next to the socket; used only on the channel's loop.
    let watcher: NIOLoopBound<TLSPeerWatcher>
    let timeout: TimeAmount

    private init(
        channel: any Channel,
        handler: NIOLoopBound<ProbeHandler>,
        watcher: NIOLoopBound<TLSPeerWatcher>,
        timeout: TimeAmount
    ) {
        self.channel = channel
        self.handler = handler
        self.watcher = watcher
        self.timeout = timeout
    }

    struct Timings {
        var dnsMs: Double
        var connectMs: Double
        var address: String
    }

    /// Resolves `host` (timed), then connects (timed).
    static func open(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        timeout: TimeAmount,
        maximumBody: Int = 64 * 1024
    ) throws(ProbeError) -> (ProbeConnection, Timings) {
        let t0 = DispatchTime.now()
        let addresses = try Self.resolve(host: host, port: port, timeout: timeout)
        let dnsMs = Self.ms(since: t0)
        let t1 = DispatchTime.now()
        var lastError: ProbeError?
        for address in addresses {
            do {
                let channel = try ClientBootstrap(group: group)
                    .connectTimeout(timeout)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandlers(
                                TLSPeerWatcher(),
                                ProbeHandler(maximumBody: maximumBody)
                            )
                        }
                    }
                    .connect(to: address)
                    .wait()
                let (handler, watcher) = try channel.eventLoop.submit {
                    let pipeline = channel.pipeline.syncOperations
                    return (
                        NIOLoopBound(try pipeline.handler(type: ProbeHandler.self), eventLoop: channel.eventLoop),
                        NIOLoopBound(try pipeline.handler(type: TLSPeerWatcher.self), eventLoop: channel.eventLoop)
                    )
                }.wait()
                let connection = ProbeConnection(channel: channel, handler: handler, watcher: watcher, timeout: timeout)
                return (
                    connection,
                    Timings(dnsMs: dnsMs, connectMs: Self.ms(since: t1), address: address.ipAddress ?? "\(address)")
                )
            } catch {
                lastError = Self.describe(connectError: error, host: host, port: port, timeout: timeout)
            }
        }
        throw lastError ?? ProbeError(kind: .resolution, message: "\(host) has no address")
    }

    static func ms(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
    }

    private static func resolve(host: String, port: Int, timeout: TimeAmount) throws(ProbeError) -> [SocketAddress] {
        if let literal = try? SocketAddress(ipAddress: host, port: port) { return [literal] }
        // getaddrinfo cannot be cancelled; run it aside and stop waiting at the timeout.
        let result = NIOLockedValueBox<Result<SocketAddress, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            let resolved = Result { try SocketAddress.makeAddressResolvingHost(host, port: port) }
            result.withLockedValue { $0 = resolved }
            done.signal()
        }
        guard done.wait(timeout: .now() + .nanoseconds(Int(timeout.nanoseconds))) == .success else {
            throw ProbeError(kind: .timeout, message: "resolving \(host) took longer than \(Self.seconds(timeout))")
        }
        switch result.withLockedValue({ $0 }) {
        case .success(let address): return [address]
        case .failure, .none:
            throw ProbeError(kind: .resolution, message: "cannot resolve the proxy host \(host)")
        }
    }

    static func seconds(_ t: TimeAmount) -> String {
        let s = Double(t.nanoseconds) / 1e9
        return s == s.rounded() ? "\(Int(s)) s" : "\(s) s"
    }

    private static func describe(connectError error: any Error, host: String, port: Int, timeout: TimeAmount)
        -> ProbeError
    {
        let text = "\(error)"
        if error is ChannelError, case .connectTimeout = error as! ChannelError {
            return ProbeError(
                kind: .timeout,
                message: "TCP connect to \(host):\(port) timed out after \(Self.seconds(timeout))"
            )
        }
        if let io = error as? IOError, io.errnoCode == ECONNREFUSED || text.contains("refused") {
            return ProbeError(kind: .refused, message: "cannot connect to \(host):\(port): connection refused")
        }
        if text.contains("refused") || text.contains("ECONNREFUSED") {
            return ProbeError(kind: .refused, message: "cannot connect to \(host):\(port): connection refused")
        }
        if text.lowercased().contains("unreachable") {
            return ProbeError(kind: .other, message: "cannot connect to \(host):\(port): network unreachable")
        }
        return ProbeError(kind: .other, message: "cannot connect to \(host):\(port): \(text)")
    }

    /// Sends a request and waits for its whole response (body up to the kept maximum).
    /// - Parameter clientCertificateOffered: whether this connection's TLS offered a certificate.
    func exchange(
        _ request: String,
        method: String,
        clientCertificateOffered: Bool = false
    ) throws(ProbeError) -> ProbeResponse {
        let promise = self.channel.eventLoop.makePromise(of: ProbeResponse.self)
        let handler = self.handler
        let timeout = self.timeout
        let channel = self.channel
        do {
            try channel.eventLoop.submit {
                handler.value.expectResponse(to: method, promise: promise, timeout: timeout)
                channel.writeAndFlush(ByteBuffer(string: request), promise: nil)
            }.wait()
            return try promise.futureResult.wait()
        } catch var error as ProbeError {
            // What came instead of HTTP (a TLS alert from a TLS port?) explains the failure.
            if error.kind == .protocolError || error.kind == .closed {
                let bytes = self.peerBytes
                if !bytes.isEmpty { error.evidence = TLSEvidence(error: nil, peerBytes: bytes) }
            }
            throw error
        } catch {
            // TLS failed after the handshake: a TLS 1.3 server judges the client's certificate
            // after the client's handshake is over, and says so in an alert here.
            let tls = self.tlsError(error, serverName: "the proxy", clientCertificateOffered: clientCertificateOffered)
            throw ProbeError(kind: .tls, message: "TLS failed: \(Self.shortTLS("\(error)"))", evidence: tls.evidence)
        }
    }

    var isActive: Bool { self.channel.isActive }

    func close() {
        try? self.channel.close().wait()
    }
}

/// Collects bytes from the proxy and frames one response at a time (RFC 9112 §6.3, as much as
/// a probe needs), and reports the TLS handshake's end.
final class ProbeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    static let maximumHead = 64 * 1024
    /// Bytes of a body kept (the rest is read and dropped): a probe needs little, a PAC file more.
    let maximumBody: Int

    init(maximumBody: Int = 64 * 1024) {
        self.maximumBody = maximumBody
    }

    private var buffer = ByteBuffer()
    private var pending: (method: String, promise: EventLoopPromise<ProbeResponse>, timer: Scheduled<Void>)?
    private var handshake: (promise: EventLoopPromise<Void>, timer: Scheduled<Void>)?
    private var head: (status: Int, reason: String, headers: [(name: String, value: String)], minor: Int)?
    private var body: [UInt8] = []
    private var closed = false
    /// A TLS error that came while no response was awaited (a TLS 1.3 alert right after the
    /// handshake): the next request is told of it rather than of a bare close.
    private var unreportedError: (any Error)?
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func expectResponse(to method: String, promise: EventLoopPromise<ProbeResponse>, timeout: TimeAmount) {
        guard let context, !self.closed else {
            promise.fail(self.unreportedError ?? ProbeError(kind: .closed, message: "the proxy closed the connection"))
            return
        }
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] () -> Void in
            self?.failPending(
                ProbeError(kind: .timeout, message: "no complete response within \(ProbeConnection.seconds(timeout))")
            )
        }
        self.pending = (method, promise, timer)
        self.head = nil
        self.body = []
        self.tryComplete()
    }

    func expectHandshake(_ promise: EventLoopPromise<Void>, timeout: TimeAmount) {
        guard let context else { return }
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            guard let self, let handshake = self.handshake else { return }
            self.handshake = nil
            handshake.promise.fail(
                ProbeError(
                    kind: .timeout,
                    message: "TLS handshake took longer than \(ProbeConnection.seconds(timeout))"
                )
            )
        }
        self.handshake = (promise, timer)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        self.buffer.writeBuffer(&bytes)
        self.tryComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent, let handshake = self.handshake {
            self.handshake = nil
            handshake.timer.cancel()
            handshake.promise.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let awaited = self.handshake != nil || self.pending != nil
        if let handshake = self.handshake {
            self.handshake = nil
            handshake.timer.cancel()
            handshake.promise.fail(error)
        }
        // A TLS error stays itself: the connection turns it into evidence.
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            if !awaited { self.unreportedError = error }
            self.failPending(error)
        } else {
            self.failPending(ProbeError(kind: .other, message: "\(error)"))
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.closed = true
        if let handshake = self.handshake {
            self.handshake = nil
            handshake.timer.cancel()
            handshake.promise.fail(ProbeError(kind: .tls, message: "the connection closed during the TLS handshake"))
        }
        self.tryComplete()
        self.failPending(
            ProbeError(kind: .closed, message: "the proxy closed the connection without a complete response")
        )
    }

    private func failPending(_ error: any Error) {
        guard let pending = self.pending else { return }
        self.pending = nil
        pending.timer.cancel()
        pending.promise.fail(error)
    }

    private func succeed(keepAlive: Bool) {
        guard let pending = self.pending, let head = self.head else { return }
        self.pending = nil
        pending.timer.cancel()
        pending.promise.succeed(
            ProbeResponse(
                status: head.status,
                reason: head.reason,
                headers: head.headers,
                body: self.body,
                keepAlive: keepAlive
            )
        )
    }

    private func tryComplete() {
        guard let pending = self.pending else { return }
        while self.head == nil {
            let view = self.buffer.readableBytesView
            guard let end = Self.headEnd(view) else {
                if view.count > Self.maximumHead {
                    self.failPending(
                        ProbeError(kind: .protocolError, message: "the response head is larger than 64 KiB")
                    )
                }
                return
            }
            let text = String(decoding: view.prefix(end - 4), as: UTF8.self)
            self.buffer.moveReaderIndex(forwardBy: end)
            guard let parsed = Self.parseHead(text) else {
                self.failPending(ProbeError(kind: .protocolError, message: "the proxy's response is not HTTP/1.x"))
                return
            }
            if parsed.status >= 100 && parsed.status < 200 && parsed.status != 101 { continue }
            self.head = parsed
        }
        guard let head = self.head else { return }
        let connectionClose = head.headers.contains {
            $0.name.lowercased() == "connection" && $0.value.lowercased().contains("close")
        }
        let keepAlive = head.minor >= 1 && !connectionClose
        let noBody =
            pending.method == "HEAD" || head.status == 204 || head.status == 304
            || (pending.method == "CONNECT" && head.status >= 200 && head.status < 300)
        if noBody {
            self.succeed(keepAlive: keepAlive)
            return
        }
        let transferEncoding = head.headers.first { $0.name.lowercased() == "transfer-encoding" }?.value.lowercased()
        if let transferEncoding, transferEncoding.contains("chunked") {
            if let decoded = Self.dechunk(self.buffer, maximumBody: self.maximumBody) {
                self.body = Array(decoded.body.prefix(self.maximumBody))
                self.buffer.moveReaderIndex(forwardBy: decoded.consumed)
                self.succeed(keepAlive: keepAlive)
            } else if self.closed {
                self.failPending(
                    ProbeError(
                        kind: .closed,
                        message: "the proxy closed the connection in the middle of a chunked body"
                    )
                )
            }
            return
        }
        if let lengthText = head.headers.first(where: { $0.name.lowercased() == "content-length" })?.value,
            let length = Int(lengthText.trimmingCharacters(in: .whitespaces))
        {
            if self.buffer.readableBytes >= length {
                let bytes = self.buffer.readBytes(length: length) ?? []
                self.body = Array(bytes.prefix(self.maximumBody))
                self.succeed(keepAlive: keepAlive)
            } else if self.closed {
                self.failPending(
                    ProbeError(kind: .closed, message: "the proxy closed the connection before the whole body arrived")
                )
            }
            return
        }
        // Delimited by the close.
        if self.closed {
            self.body = Array(self.buffer.readableBytesView.prefix(self.maximumBody))
            self.buffer.clear()
            self.succeed(keepAlive: false)
        }
    }

    private static func headEnd(_ view: ByteBufferView) -> Int? {
        let bytes = Array(view)
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4)
        where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i + 4
        }
        return nil
    }

    static func parseHead(_ text: String) -> (
        status: Int, reason: String, headers: [(name: String, value: String)], minor: Int
    )? {
        var lines = text.components(separatedBy: "\r\n")
        guard !lines.isEmpty else { return nil }
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...999).contains(status)
        else { return nil }
        let minor = parts[0].hasSuffix("0") ? 0 : 1
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append(
                (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
            )
        }
        return (status, parts.count > 2 ? String(parts[2]) : "", headers, minor)
    }

    /// Decodes a complete chunked body, or `nil` if it has not all arrived.
    static func dechunk(_ buffer: ByteBuffer, maximumBody: Int) -> (body: [UInt8], consumed: Int)? {
        let bytes = Array(buffer.readableBytesView)
        var i = 0
        var body: [UInt8] = []
        func line() -> String? {
            var j = i
            while j + 1 < bytes.count {
                if bytes[j] == 13 && bytes[j + 1] == 10 {
                    let s = String(decoding: bytes[i..<j], as: UTF8.self)
                    i = j + 2
                    return s
                }
                j += 1
            }
            return nil
        }
        while true {
            guard let sizeLine = line() else { return nil }
            let sizeText = sizeLine.split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { return nil }
            if size == 0 {
                while true {
                    guard let trailer = line() else { return nil }
                    if trailer.isEmpty { return (body, i) }
                }
            }
            guard i + size + 2 <= bytes.count else { return nil }
            if body.count < maximumBody { body += bytes[i..<(i + size)] }
            i += size + 2
        }
    }
}
