import Foundation
import NIOCore
import PortcullisProxy

#if canImport(Glibc)
    import Glibc
#endif

/// Listening sockets handed over by whoever started the process, by systemd's protocol
/// (`sd_listen_fds`): `LISTEN_PID` is this process, `LISTEN_FDS` counts the descriptors from 3
/// on, `LISTEN_FDNAMES` names them (colon-separated). A socket named `tls` is a TLS listener, one
/// named `admin` the admin listener, every other one a plain proxy listener (systemd names a
/// socket after its unit by default).
///
/// Two processes that inherit the same socket share its one accept queue: a replacement starts
/// accepting before the old process stops, and a connection waiting in the queue is taken by
/// whichever accepts it — nothing is reset, unlike two `SO_REUSEPORT` sockets, where the closing
/// one's queue is lost.
public struct InheritedSocket: Sendable, Hashable {
    public enum Role: String, Sendable, Hashable {
        case proxy
        case tls
        case admin
    }

    public var descriptor: CInt
    public var role: Role
    public var name: String
    /// The address the socket is bound to (for logs and the loopback checks).
    public var address: SocketAddress
}

public enum SocketActivation {
    /// The first inherited descriptor (`SD_LISTEN_FDS_START`).
    static let firstDescriptor: CInt = 3
    /// More than this many is not a hand-over but a mistake (and would be slow to check).
    static let maximumCount = 64

    /// The sockets handed to process `pid` by `environment`, checked (each must be a listening
    /// TCP socket on IPv4 or IPv6) and made close-on-exec so no child process inherits them.
    /// Without `LISTEN_PID`/`LISTEN_FDS`, or when `LISTEN_PID` names another process (the
    /// variables were inherited from a parent that was activated), there are none.
    public static func sockets(environment: [String: String], pid: pid_t) throws -> [InheritedSocket] {
        try self.sockets(environment: environment, pid: pid, firstDescriptor: Self.firstDescriptor)
    }

    /// `firstDescriptor`: 3 by the protocol; tests pass sockets elsewhere.
    static func sockets(
        environment: [String: String],
        pid: pid_t,
        firstDescriptor: CInt
    ) throws -> [InheritedSocket] {
        guard let pidText = environment["LISTEN_PID"], let countText = environment["LISTEN_FDS"] else { return [] }
        guard let listenPID = pid_t(pidText), listenPID > 0 else {
            throw ServeError("LISTEN_PID=\(pidText) is not a process id (socket activation)")
        }
        guard listenPID == pid else { return [] }
        guard let count = Int(countText), count >= 0, count <= Self.maximumCount else {
            throw ServeError(
                "LISTEN_FDS=\(countText) is not a count of 0 to \(Self.maximumCount) sockets (socket activation)"
            )
        }
        var names =
            environment["LISTEN_FDNAMES"].map {
                $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            } ?? []
        if names.count != count {
            guard names.isEmpty else {
                throw ServeError(
                    "LISTEN_FDNAMES names \(names.count) sockets but LISTEN_FDS=\(count) (socket activation)"
                )
            }
            names = Array(repeating: "", count: count)
        }
        var sockets: [InheritedSocket] = []
        for index in 0..<count {
            let descriptor = firstDescriptor + CInt(index)
            let name = names[index]
            let address = try Self.checkListening(descriptor, name: name)
            // What a child process (the PAC evaluator) must not keep open.
            _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
            let role: InheritedSocket.Role =
                switch name.lowercased() {
                case "tls": .tls
                case "admin": .admin
                default: .proxy
                }
            sockets.append(InheritedSocket(descriptor: descriptor, role: role, name: name, address: address))
        }
        if sockets.filter({ $0.role == .admin }).count > 1 {
            throw ServeError("more than one inherited socket is named admin (socket activation)")
        }
        return sockets
    }

    /// Removes the hand-over's variables, so a child process does not take them for its own.
    public static func forget() {
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
    }

    /// The address of `descriptor` if it is a listening stream socket on IPv4/IPv6.
    static func checkListening(_ descriptor: CInt, name: String) throws -> SocketAddress {
        let label = name.isEmpty ? "inherited descriptor \(descriptor)" : "inherited descriptor \(descriptor) (\(name))"
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw ServeError("\(label) is not open (socket activation: LISTEN_FDS counts descriptors from 3)")
        }
        guard (status.st_mode & S_IFMT) == S_IFSOCK else {
            throw ServeError("\(label) is not a socket (socket activation)")
        }
        func option(_ name: CInt) -> CInt? {
            var value: CInt = 0
            var length = socklen_t(MemoryLayout<CInt>.size)
            return getsockopt(descriptor, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        guard option(SO_TYPE) == CInt(SOCK_STREAM.rawValue) else {
            throw ServeError("\(label) is not a stream socket; the proxy needs TCP (socket activation)")
        }
        guard option(SO_ACCEPTCONN) == 1 else {
            throw ServeError("\(label) is not listening; pass a socket after listen() (socket activation)")
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard named == 0 else { throw ServeError("\(label): cannot read its address (socket activation)") }
        switch CInt(storage.ss_family) {
        case AF_INET:
            let v4 = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            return SocketAddress(v4, host: "")
        case AF_INET6:
            let v6 = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            return SocketAddress(v6, host: "")
        default:
            throw ServeError(
                "\(label) is not an IPv4 or IPv6 socket; the proxy listens on TCP only (socket activation)"
            )
        }
    }
}

extension InheritedSocket: CustomStringConvertible {
    /// `inherited socket 3 (127.0.0.1:3128)`, for messages and logs.
    public var description: String {
        "inherited socket \(self.descriptor) (\(self.hostAndPort))"
    }

    /// `127.0.0.1:3128`, `[::1]:3128`: the address as a proxy URL names it.
    public var hostAndPort: String {
        let host = self.address.ipAddress ?? "?"
        let port = self.address.port.map(String.init) ?? "?"
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}
