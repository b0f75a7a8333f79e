import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A `Resolver` for NIO's Happy Eyeballs connector that runs getaddrinfo on a thread pool (it
/// blocks) and drops addresses the ``DestinationGuard`` refuses, so only allowed addresses are
/// ever connected to.
final class PolicyResolver: Resolver, Sendable {
    // One resolver serves one connection attempt on one event loop; the lookup is shared by the
    // A and AAAA queries, which NIO issues from that loop.
    private let eventLoop: any EventLoop
    private let threadPool: NIOThreadPool
    private let destinationGuard: DestinationGuard
    private let onPolicyDenial: @Sendable (_ rule: String?, _ addresses: [SocketAddress]) -> Void
    private let lookup: NIOLoopBoundBox<EventLoopFuture<[SocketAddress]>?>

    /// - Parameter onPolicyDenial: told when the access rules refuse every address (to log and
    ///   count it like the other policy denials); runs on the thread pool.
    init(
        eventLoop: any EventLoop,
        threadPool: NIOThreadPool,
        guard destinationGuard: DestinationGuard,
        onPolicyDenial: @escaping @Sendable (_ rule: String?, _ addresses: [SocketAddress]) -> Void = { _, _ in }
    ) {
        self.eventLoop = eventLoop
        self.lookup = .makeEmptyBox(valueType: EventLoopFuture<[SocketAddress]>.self, eventLoop: eventLoop)
        self.threadPool = threadPool
        self.destinationGuard = destinationGuard
        self.onPolicyDenial = onPolicyDenial
    }

    func initiateAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        self.addresses(host: host, port: port).map { $0.filter { $0.protocol == .inet } }
    }

    func initiateAAAAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        self.addresses(host: host, port: port).map { $0.filter { $0.protocol == .inet6 } }
    }

    func cancelQueries() {}

    private func addresses(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        if let lookup = self.lookup.value { return lookup }
        let destinationGuard = self.destinationGuard
        let onPolicyDenial = self.onPolicyDenial
        let future = self.threadPool.runIfActive(eventLoop: self.eventLoop) { () throws -> [SocketAddress] in
            let all = try Self.getaddrinfo(host: host, port: port)
            do {
                return try destinationGuard.admit(all, host: host, port: port)
            } catch ResolutionError.policyDenied(let rule) {
                onPolicyDenial(rule, all)
                throw ResolutionError.policyDenied(rule: rule)
            }
        }
        self.lookup.value = future
        return future
    }

    /// Blocking getaddrinfo for TCP addresses of both families.
    static func getaddrinfo(host: String, port: Int) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
            hints.ai_socktype = SOCK_STREAM
        #endif
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = Glibc.getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            let message = rc == 0 ? "no address" : String(cString: gai_strerror(rc))
            throw ResolutionError.nameNotResolved(message)
        }
        defer { freeaddrinfo(first) }
        var addresses: [SocketAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            if let sa = info.pointee.ai_addr {
                switch info.pointee.ai_family {
                case AF_INET:
                    let sin = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
                    addresses.append(SocketAddress(sin, host: host))
                case AF_INET6:
                    let sin6 = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
                    addresses.append(SocketAddress(sin6, host: host))
                default:
                    break
                }
            }
            cursor = info.pointee.ai_next
        }
        return addresses
    }
}
