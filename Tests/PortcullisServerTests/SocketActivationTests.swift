import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PortcullisProxy
import Testing

@testable import PortcullisServer

#if canImport(Glibc)
    import Glibc
#endif

/// Real sockets placed at consecutive descriptors, as a service manager hands them over.
private final class HandedOver {
    let first: CInt
    private(set) var descriptors: [CInt] = []

    /// `kinds`: "listen4", "listen6", "bound" (not listening), "udp", "file".
    init(_ kinds: [String]) throws {
        // Far above anything the test process holds; a block of its own for each (tests run in parallel).
        self.first = Self.nextBlock.withLockedValue { next in
            defer { next += 8 }
            return next
        }
        for (index, kind) in kinds.enumerated() {
            let made: CInt
            switch kind {
            case "listen4", "bound": made = try Self.tcp(v6: false, listen: kind == "listen4")
            case "listen6": made = try Self.tcp(v6: true, listen: true)
            case "udp": made = socket(AF_INET, CInt(SOCK_DGRAM.rawValue), 0)
            default: made = open("/dev/null", O_RDONLY)
            }
            let target = self.first + CInt(index)
            #expect(dup2(made, target) == target)
            close(made)
            self.descriptors.append(target)
        }
    }

    private static let nextBlock = NIOLockedValueBox<CInt>(900)

    deinit {
        for descriptor in self.descriptors { close(descriptor) }
    }

    private static func tcp(v6: Bool, listen listening: Bool) throws -> CInt {
        let descriptor = socket(v6 ? AF_INET6 : AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        let address = try SocketAddress(ipAddress: v6 ? "::1" : "127.0.0.1", port: 0)
        let bound = address.withSockAddr { bind(descriptor, $0, socklen_t($1)) }
        #expect(bound == 0)
        if listening { #expect(listen(descriptor, 8) == 0) }
        return descriptor
    }
}

@Suite struct SocketActivationTests {
    private func sockets(_ environment: [String: String], _ handed: HandedOver, pid: pid_t = 4242) throws
        -> [InheritedSocket]
    {
        try SocketActivation.sockets(environment: environment, pid: pid, firstDescriptor: handed.first)
    }

    @Test func noHandOverIsNoSockets() throws {
        let handed = try HandedOver(["listen4"])
        #expect(try self.sockets([:], handed).isEmpty)
        #expect(try self.sockets(["LISTEN_FDS": "1"], handed).isEmpty)
        // Variables inherited from an activated parent name the parent: not ours.
        #expect(try self.sockets(["LISTEN_PID": "4243", "LISTEN_FDS": "1"], handed).isEmpty)
    }

    @Test func socketsAreTakenWithTheirRolesAndAddresses() throws {
        let handed = try HandedOver(["listen4", "listen6", "listen4", "listen4"])
        let sockets = try self.sockets(
            ["LISTEN_PID": "4242", "LISTEN_FDS": "4", "LISTEN_FDNAMES": "portcullis.socket:proxy6:TLS:admin"],
            handed
        )
        #expect(sockets.map(\.role) == [.proxy, .proxy, .tls, .admin])
        #expect(sockets.map(\.descriptor) == handed.descriptors)
        #expect(sockets[0].address.ipAddress == "127.0.0.1")
        #expect(sockets[1].address.ipAddress == "::1")
        #expect(sockets[1].hostAndPort.hasPrefix("[::1]:"))
        #expect(sockets[0].description.hasPrefix("inherited socket \(handed.first) (127.0.0.1:"))
        // No child process (the PAC evaluator) inherits them.
        for descriptor in handed.descriptors {
            #expect(fcntl(descriptor, F_GETFD) & FD_CLOEXEC != 0)
        }
    }

    @Test func unnamedSocketsAreProxyListeners() throws {
        let handed = try HandedOver(["listen4", "listen4"])
        let sockets = try self.sockets(["LISTEN_PID": "4242", "LISTEN_FDS": "2"], handed)
        #expect(sockets.map(\.role) == [.proxy, .proxy])
    }

    @Test(arguments: [
        (["LISTEN_PID": "x", "LISTEN_FDS": "1"], ["listen4"], "LISTEN_PID=x is not a process id"),
        (["LISTEN_PID": "4242", "LISTEN_FDS": "-1"], ["listen4"], "LISTEN_FDS=-1 is not a count"),
        (["LISTEN_PID": "4242", "LISTEN_FDS": "65"], ["listen4"], "LISTEN_FDS=65 is not a count"),
        (["LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"], ["listen4"], "names 2 sockets"),
        (["LISTEN_PID": "4242", "LISTEN_FDS": "1"], ["bound"], "is not listening"),
        (["LISTEN_PID": "4242", "LISTEN_FDS": "1"], ["udp"], "is not a stream socket"),
        (["LISTEN_PID": "4242", "LISTEN_FDS": "1"], ["file"], "is not a socket"),
        (["LISTEN_PID": "4242", "LISTEN_FDS": "2"], ["listen4"], "is not open"),
        (
            ["LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "admin:admin"], ["listen4", "listen4"],
            "more than one inherited socket is named admin"
        ),
    ])
    func mistakesAreRefusedByName(environment: [String: String], kinds: [String], message: String) throws {
        let handed = try HandedOver(kinds)
        #expect {
            _ = try self.sockets(environment, handed)
        } throws: { error in
            (error as? ServeError)?.message.contains(message) == true
        }
    }

    @Test func inheritedListenersReplaceTheDefaultListenerAndCountForTheChecks() throws {
        let handed = try HandedOver(["listen4", "listen4"])
        let sockets = try self.sockets(
            ["LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "proxy:admin"],
            handed
        )
        let c = try ServerConfiguration(options: ServeOptions.unset(), environment: ["HOME": "/h"], inherited: sockets)
        #expect(c.listenText.isEmpty)
        #expect(c.adminSocket == handed.descriptors[1])
        #expect(c.admin == sockets[1].address)
        // --admin and an inherited admin socket are one too many.
        #expect(throws: ServeError.self) {
            try ServerConfiguration(
                options: ServeOptions.parse(["--admin", "127.0.0.1:9090"]),
                environment: [:],
                inherited: sockets
            )
        }
        // An inherited socket named admin alone still gets the default proxy listener.
        let adminOnly = try ServerConfiguration(
            options: ServeOptions.unset(),
            environment: ["HOME": "/h"],
            inherited: [sockets[1]]
        )
        #expect(adminOnly.listenText == ["127.0.0.1:3128"])
    }

    @Test func anInheritedTLSSocketNeedsTheCertificate() throws {
        let handed = try HandedOver(["listen4"])
        let sockets = try self.sockets(["LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "tls"], handed)
        #expect {
            try ServerConfiguration(options: ServeOptions.unset(), environment: [:], inherited: sockets)
        } throws: { error in
            (error as? ServeError)?.message.contains("--listen-tls needs the proxy's certificate") == true
        }
    }
}
