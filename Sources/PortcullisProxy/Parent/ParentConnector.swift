import NIOCore
import NIOPosix
import NIOSSL
import PortcullisAuth

/// Why a request through the parents failed, for the client's 502 (``ProxyResponse/parentFailure(_:)``).
enum ParentError: Error, CustomStringConvertible {
    /// No parent could be connected to (the last one's error).
    case unreachable(parent: String, underlying: any Error)
    /// The parent's 407 could not be answered, or it refused the answer.
    case authentication(parent: String, ParentAuthFailure)
    /// The request already went through this proxy on its way to a parent: a loop.
    case loop
    /// The parent answered the CONNECT with something else than 2xx or 407.
    case refusedTunnel(parent: String, status: Int)
    /// The parent's answer to the CONNECT was not valid HTTP/1.1, or did not come in time.
    case brokenAnswer(parent: String, reason: String)
    /// TLS to an `https://` parent failed (its certificate, or the handshake).
    case tls(parent: String, underlying: any Error)

    var description: String {
        switch self {
        case .unreachable(let parent, let error): return "parent \(parent) unreachable: \(error)"
        case .loop: return "the request came back through this proxy: its parents route to it"
        case .authentication(let parent, let failure): return "parent \(parent): \(failure.details)"
        case .refusedTunnel(let parent, let status): return "parent \(parent) answered the CONNECT with \(status)"
        case .brokenAnswer(let parent, let reason): return "parent \(parent): \(reason)"
        case .tls(let parent, let error): return "TLS to parent \(parent) failed: \(error)"
        }
    }
}

/// Opens upstream connections through the parents: TCP to the first parent that is up (the
/// next one when it cannot be reached, marking it down), and for a tunnel the CONNECT to it
/// with its 407 answered (``ParentHandshake``) before the caller's initializer takes the
/// channel over. Runs on the requesting connection's event loop.
struct ParentConnector: Sendable {
    let parents: ParentSet
    /// The parents this request's route allows, in order.
    let allowed: [Int]
    let base: any UpstreamConnector
    let connectTimeout: TimeAmount
    /// How long the parent has for its answer to the CONNECT.
    let answerTimeout: TimeAmount
    /// A resolver for one connection attempt (a resolver keeps its one lookup).
    let makeResolver: @Sendable () -> PolicyResolver
    /// Where Negotiate tokens are made (GSSAPI blocks).
    let threadPool: NIOThreadPool

    /// A connection to a parent for absolute-form requests: `initializer` set it up before it
    /// became active. Succeeds with the channel and the parent's index.
    func connect(
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<(any Channel, Int)> {
        let candidates = self.parents.candidates(now: .now(), among: self.allowed)
        return self.connect(candidates[...], on: eventLoop, lastError: nil, initializer: initializer)
    }

    private func connect(
        _ candidates: ArraySlice<Int>,
        on eventLoop: any EventLoop,
        lastError: (parent: String, error: any Error)?,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<(any Channel, Int)> {
        guard let index = candidates.first else {
            let failure = lastError ?? (parent: "-", error: ChannelError.connectTimeout(self.connectTimeout))
            return eventLoop.makeFailedFuture(
                ParentError.unreachable(parent: failure.parent, underlying: failure.error)
            )
        }
        let parent = self.parents.parents[index]
        let request = UpstreamConnectRequest(
            host: parent.host,
            port: parent.port,
            isTunnel: false,
            connectTimeout: self.connectTimeout,
            resolver: self.makeResolver()
        )
        let parents = self.parents
        let this = self
        var setUp = initializer
        if parent.tls {
            guard let context = parents.tlsContext else {
                return eventLoop.makeFailedFuture(
                    ParentError.brokenAnswer(
                        parent: parent.name,
                        reason: "the TLS settings for https:// parents did not load"
                    )
                )
            }
            setUp = { channel in
                channel.eventLoop.makeCompletedFuture {
                    // A name is sent (SNI) and checked against the certificate; for an address
                    // NIOSSL checks the address connected to against the certificate's IP SANs.
                    let name = CanonicalHost(parent.host)?.addressBytes == nil ? parent.host : nil
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: context, serverHostname: name)
                    )
                }
                .flatMap { initializer(channel) }
            }
        }
        return self.base.connect(request, on: eventLoop, initializer: setUp)
            .map { channel -> (any Channel, Int) in
                parents.connected(index)
                return (channel, index)
            }
            .flatMapError { error in
                parents.connectFailed(index, error: error, now: .now())
                if candidates.count > 1 { parents.failedOver(from: index) }
                return this.connect(
                    candidates.dropFirst(),
                    on: eventLoop,
                    lastError: (parent.name, error),
                    initializer: initializer
                )
            }
    }

    /// A tunnel to `target` (`host:port`) through a parent: connected, the CONNECT answered,
    /// then `initializer` adds the tunnel's handlers and the bytes that followed the parent's
    /// 200 are passed to them.
    func connectTunnel(
        to target: String,
        via: [String],
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<(any Channel, Int)> {
        let promise = eventLoop.makePromise(of: (any Channel, Int).self)
        self.attempt(
            target: target,
            via: via,
            handshake: nil,
            on: eventLoop,
            initializer: initializer,
            promise: promise
        )
        return promise.futureResult
    }

    /// One connection's try: connect (failing over), then send the CONNECT as `handshake` says.
    private func attempt(
        target: String,
        via: [String],
        handshake existing: ParentHandshake?,
        fixedParent: Int? = nil,
        authorization: String?? = nil,
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>,
        promise: EventLoopPromise<(any Channel, Int)>
    ) {
        let answers = NIOLoopBound(
            ParentTunnelHandshakeHandler(
                target: target,
                via: (via + ["1.1 \(self.parents.viaName)"]).joined(separator: ", "),
                timeout: self.answerTimeout
            ),
            eventLoop: eventLoop
        )
        let connecting: EventLoopFuture<(any Channel, Int)>
        let setUp: @Sendable (any Channel) -> EventLoopFuture<Void> = { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(answers.value) }
        }
        if let fixedParent {
            connecting = self.connect([fixedParent][...], on: eventLoop, lastError: nil, initializer: setUp)
        } else {
            connecting = self.connect(on: eventLoop, initializer: setUp)
        }
        let this = self
        connecting.assumeIsolated().whenComplete { result in
            switch result {
            case .failure(let error):
                promise.fail(error)
            case .success(let (channel, index)):
                var handshake =
                    existing
                    ?? ParentHandshake(
                        method: "CONNECT",
                        uri: target,
                        credentials: this.parents.credentials(of: index),
                        allowed: this.parents.routing.schemes,
                        memory: this.parents.takeMemory(index)
                    )
                let first: ParentHandshake.Action
                if let authorization {
                    first = .send(authorization: authorization)
                } else {
                    first = handshake.start()
                }
                this.drive(
                    first,
                    handshake: handshake,
                    channel: channel,
                    index: index,
                    answers: answers.value,
                    target: target,
                    via: via,
                    initializer: initializer,
                    promise: promise
                )
            }
        }
    }

    /// Carries out `action` on `channel` and follows the parent's answers until the tunnel is
    /// open or the request fails.
    private func drive(
        _ action: ParentHandshake.Action,
        handshake: ParentHandshake,
        channel: any Channel,
        index: Int,
        answers: ParentTunnelHandshakeHandler,
        target: String,
        via: [String],
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>,
        promise: EventLoopPromise<(any Channel, Int)>
    ) {
        var handshake = handshake
        let parent = self.parents.parents[index].name
        // The next step on the same connection, with the handshake as it stands then.
        func continueWith(_ next: ParentHandshake.Action, _ handshake: ParentHandshake) {
            self.drive(
                next,
                handshake: handshake,
                channel: channel,
                index: index,
                answers: answers,
                target: target,
                via: via,
                initializer: initializer,
                promise: promise
            )
        }
        switch action {
        case .negotiate(let input):
            let negotiation =
                answers.negotiation
                ?? ParentNegotiation(
                    host: self.parents.parents[index].host,
                    clientKeytab: self.parents.routing.clientKeytab
                )
            answers.negotiation = negotiation
            negotiation.step(input, threadPool: self.threadPool, on: channel.eventLoop).assumeIsolated()
                .whenSuccess { result in
                    let next = handshake.negotiateStepped(result)
                    continueWith(next, handshake)
                }
        case .send(let authorization):
            answers.send(authorization: authorization) { answer in
                switch answer {
                case .established(let leftover):
                    _ = handshake.received(status: 200, challenges: [], reusable: true)
                    if let memory = handshake.memory { self.parents.remember(memory, for: index) }
                    self.parents.counted(index, scheme: Self.scheme(of: handshake.memory), failure: nil)
                    self.takeOver(
                        channel,
                        answers: answers,
                        leftover: leftover,
                        index: index,
                        initializer: initializer,
                        promise: promise
                    )
                case .answered(let status, let challenges, let reusable):
                    let next = handshake.received(status: status, challenges: challenges, reusable: reusable)
                    if case .done = next {
                        channel.close(promise: nil)
                        promise.fail(ParentError.refusedTunnel(parent: parent, status: status))
                        return
                    }
                    continueWith(next, handshake)
                case .tlsFailed(let error):
                    channel.close(promise: nil)
                    promise.fail(ParentError.tls(parent: parent, underlying: error))
                case .failed(let reason):
                    channel.close(promise: nil)
                    if case .fail(let failure) = handshake.connectionClosed(), failure != .connectionClosedMidHandshake
                    {
                        promise.fail(ParentError.authentication(parent: parent, failure))
                    } else {
                        promise.fail(ParentError.brokenAnswer(parent: parent, reason: reason))
                    }
                }
            }
        case .sendOnNewConnection(let authorization):
            channel.close(promise: nil)
            self.attempt(
                target: target,
                via: via,
                handshake: handshake,
                fixedParent: index,
                authorization: .some(authorization),
                on: channel.eventLoop,
                initializer: initializer,
                promise: promise
            )
        case .done:
            // Not reached: `.done` is handled where the answer is read.
            channel.close(promise: nil)
            promise.fail(ParentError.brokenAnswer(parent: parent, reason: "unexpected end of the handshake"))
        case .fail(let failure):
            channel.close(promise: nil)
            self.parents.remember(handshake.memory, for: index)
            self.parents.counted(index, scheme: nil, failure: failure)
            promise.fail(ParentError.authentication(parent: parent, failure))
        }
    }

    /// The parent opened the tunnel: the handshake handler leaves, the caller's handlers come
    /// in, and what followed the 200 goes to them.
    private func takeOver(
        _ channel: any Channel,
        answers: ParentTunnelHandshakeHandler,
        leftover: ByteBuffer,
        index: Int,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>,
        promise: EventLoopPromise<(any Channel, Int)>
    ) {
        initializer(channel).assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                answers.leave(passing: leftover)
                promise.succeed((channel, index))
            case .failure(let error):
                channel.close(promise: nil)
                promise.fail(error)
            }
        }
    }

    static func scheme(of memory: ParentAuthMemory?) -> ParentAuthScheme? {
        switch memory {
        case .basic?: return .basic
        case .digest?: return .digest
        case .ntlm?: return .ntlm
        case .negotiate?: return .negotiate
        case nil: return nil
        }
    }
}

/// Sends a CONNECT to a parent and reads its answer: a 2xx (the tunnel is open; bytes after the
/// head belong to it), or any other status with its challenges (its body read and dropped).
final class ParentTunnelHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Answer {
        case established(leftover: ByteBuffer)
        /// Not 2xx; `reusable`: the connection stays open for another CONNECT.
        case answered(status: Int, challenges: [Challenge], reusable: Bool)
        /// The connection closed or the answer was broken or late (the reason, for the 502).
        case failed(String)
        /// TLS to the parent failed.
        case tlsFailed(any Error)
    }

    /// Longest answer head read from a parent.
    static let maximumHead = 64 * 1024

    private let target: String
    /// The `Via` value sent: the client's hops, then this proxy's.
    private let via: String
    private let timeout: TimeAmount
    private var context: ChannelHandlerContext?
    private var buffer = ByteBuffer()
    private var pending: ((Answer) -> Void)?
    /// The non-2xx head being read, with its body's framer.
    private var answer: (status: Int, challenges: [Challenge], framer: ResponseFramer)?
    private var deadline: Scheduled<Void>?
    private var active = false
    /// The Kerberos context of this connection's Negotiate, once one is begun.
    var negotiation: ParentNegotiation?
    private var queuedAuthorization: String??

    init(target: String, via: String, timeout: TimeAmount) {
        self.target = target
        self.via = via
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.active = context.channel.isActive
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.deadline?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        self.active = true
        if let queued = self.queuedAuthorization {
            self.queuedAuthorization = nil
            self.write(authorization: queued, context: context)
        }
        context.fireChannelActive()
    }

    /// Sends the CONNECT (with `authorization`) and calls `then` with the parent's answer.
    func send(authorization: String?, then: @escaping (Answer) -> Void) {
        self.pending = then
        self.answer = nil
        guard let context = self.context else {
            self.finish(.failed("the connection to the parent closed"))
            return
        }
        if self.active {
            self.write(authorization: authorization, context: context)
        } else {
            self.queuedAuthorization = .some(authorization)
        }
        let seconds = self.timeout.nanoseconds / 1_000_000_000
        self.deadline?.cancel()
        self.deadline = context.eventLoop.assumeIsolated().scheduleTask(in: self.timeout) { [weak self] in
            self?.finish(.failed("no answer to the CONNECT within \(seconds) s"))
            self?.context?.close(promise: nil)
        }
    }

    private func write(authorization: String?, context: ChannelHandlerContext) {
        var head = context.channel.allocator.buffer(capacity: 128)
        head.writeString("CONNECT \(self.target) HTTP/1.1\r\nHost: \(self.target)\r\n")
        if let authorization {
            head.writeString("Proxy-Authorization: \(authorization)\r\n")
        }
        head.writeString("Via: \(self.via)\r\n\r\n")
        context.writeAndFlush(self.wrapOutboundOut(head), promise: nil)
    }

    /// Leaves the pipeline; `leftover` (tunnel bytes that came with the 200) goes to the
    /// handlers after it.
    func leave(passing leftover: ByteBuffer) {
        guard let context = self.context else { return }
        self.deadline?.cancel()
        if leftover.readableBytes > 0 {
            context.fireChannelRead(self.wrapInboundOut(leftover))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        guard self.pending != nil else { return }
        if var answer = self.answer {
            self.feedBody(&answer, bytes)
            return
        }
        self.buffer.writeBuffer(&bytes)
        guard let end = MessageSyntax.findHeadEnd(self.buffer) else {
            if self.buffer.readableBytes > Self.maximumHead {
                self.finish(.failed("the parent's answer head is longer than \(Self.maximumHead) bytes"))
                context.close(promise: nil)
            }
            return
        }
        let head: ResponseHead
        do {
            head = try ResponseFramer.parseHead(self.buffer.getSlice(at: self.buffer.readerIndex, length: end)!)
        } catch {
            self.finish(.failed("the parent's answer is not valid HTTP/1.1 (\(error))"))
            context.close(promise: nil)
            return
        }
        if (200..<300).contains(head.status) {
            self.buffer.moveReaderIndex(forwardBy: end)
            let leftover = self.buffer
            self.buffer = ByteBuffer()
            self.finish(.established(leftover: leftover))
            return
        }
        if (100..<200).contains(head.status) {
            // An interim answer: the final one follows.
            self.buffer.moveReaderIndex(forwardBy: end)
            return
        }
        let challenges = (try? ChallengeParser.parse(fieldValues: head.values(named: "proxy-authenticate"))) ?? []
        var framer = ResponseFramer()
        framer.expectResponse(toHead: false, dechunk: false)
        var started = (status: head.status, challenges: challenges, framer: framer)
        let all = self.buffer
        self.buffer = ByteBuffer()
        self.feedBody(&started, all)
    }

    /// Reads the non-2xx answer through its body's end.
    private func feedBody(
        _ answer: inout (status: Int, challenges: [Challenge], framer: ResponseFramer),
        _ bytes: ByteBuffer
    ) {
        var ended = false
        do {
            try answer.framer.feed(bytes) { event in
                if case .end = event { ended = true }
            }
        } catch {
            self.answer = nil
            self.finish(.failed("the parent's answer is not valid HTTP/1.1 (\(error))"))
            self.context?.close(promise: nil)
            return
        }
        if ended {
            self.answer = nil
            self.finish(
                .answered(status: answer.status, challenges: answer.challenges, reusable: answer.framer.reusable)
            )
        } else {
            self.answer = answer
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if var answer = self.answer {
            // A body delimited by the close ends here; the connection is gone either way.
            var ended = false
            try? answer.framer.feedEOF { if case .end = $0 { ended = true } }
            self.answer = nil
            if ended {
                self.finish(.answered(status: answer.status, challenges: answer.challenges, reusable: false))
                context.fireChannelInactive()
                return
            }
        }
        self.finish(.failed("the parent closed the connection before answering the CONNECT"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.finish(ProxyResponse.isTLSError(error) ? .tlsFailed(error) : .failed("\(error)"))
        context.close(promise: nil)
    }

    private func finish(_ answer: Answer) {
        self.deadline?.cancel()
        self.deadline = nil
        guard let pending = self.pending else { return }
        self.pending = nil
        pending(answer)
    }
}
