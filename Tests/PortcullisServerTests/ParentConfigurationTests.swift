import Foundation
import NIOCore
import PortcullisProxy
import Testing

@testable import PortcullisServer

/// `--parent` and its companions, as `serve` reads them: URLs, where the password comes from,
/// and errors that never repeat a password.
@Suite struct ParentConfigurationTests {
    func routing(_ arguments: [String]) throws -> ParentRouting {
        try ServerConfiguration(options: ServeOptions.parse(arguments), environment: [:]).proxy.parentRouting
    }

    func message(_ arguments: [String]) -> String? {
        do {
            _ = try self.routing(arguments)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func aURLGivesHostPortAndPercentDecodedCredentials() throws {
        let r = try self.routing([
            "--parent", "http://CORP%5Cbridge:p%40ss%3Aw%25rd@Proxy.Corp.Example:8080",
            "--parent", "http://[::1]",
        ])
        #expect(r.parents.count == 2)
        #expect(r.parents[0].host == "proxy.corp.example" && r.parents[0].port == 8080)
        #expect(r.parents[0].user == #"CORP\bridge"# && r.parents[0].password == "p@ss:w%rd")
        #expect(r.parents[1].host == "::1" && r.parents[1].port == 3128 && r.parents[1].user == nil)
        #expect(r.parents[1].name == "[::1]:3128")
        let tls = try self.routing(["--parent", "https://p.example"])
        #expect(tls.parents[0].tls && tls.parents[0].port == 443)
        #expect(!r.parents[0].tls)
        #expect(r.schemes == Set(ParentAuthScheme.allCases))
        // The description never carries the password.
        #expect(!"\(r.parents[0])".contains("p@ss"))
    }

    @Test func thePasswordComesFromAFileOrTheEnvironmentOnce() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("parent-\(UUID().uuidString)")
        try "from-file\nsecond line ignored\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let fromFile = try self.routing(["--parent", "http://bridge@p:1", "--parent-password-file", file.path])
        #expect(fromFile.parents[0].password == "from-file")

        setenv("PORTCULLIS_TEST_PARENT_PASSWORD", "from-env", 1)
        defer { unsetenv("PORTCULLIS_TEST_PARENT_PASSWORD") }
        let fromEnv = try self.routing([
            "--parent", "http://bridge@p:1", "--parent-password-env", "PORTCULLIS_TEST_PARENT_PASSWORD",
        ])
        #expect(fromEnv.parents[0].password == "from-env")

        let twice = self.message(["--parent", "http://bridge:inline-secret@p:1", "--parent-password-file", file.path])
        #expect(twice?.contains("give it once") == true)
        #expect(twice?.contains("inline-secret") == false)
        #expect(
            self.message(["--parent", "http://p:1", "--parent-password-file", file.path])?.contains("names no user")
                == true
        )
        #expect(
            self.message(["--parent-password-env", "NOPE_NOT_SET_ANYWHERE", "--parent", "http://u@p:1"])?.contains(
                "not set"
            ) == true
        )
    }

    @Test func badURLsAreRefusedWithoutRepeatingThem() {
        for (url, says) in [
            ("ftp://u:topsecret@p:1", "ftp://"),
            ("http://u:topsecret@p:1/path", "path"),
            ("u:topsecret@p:1", "URL"),
            ("http://u:topsecret@:1", "no host"),
            ("http://u:topsecret@p:99999", "port"),
        ] {
            let error = self.message(["--parent", url])
            #expect(error?.contains(says) == true, "\(url): \(error ?? "accepted")")
            #expect(error?.contains("topsecret") == false, "\(url) repeated: \(error ?? "")")
        }
    }

    @Test func parentAuthAndDirectForAreCheckedAndNeedAParent() throws {
        let r = try self.routing([
            "--parent", "http://p:1", "--parent-auth", "Digest, ntlm", "--direct-for",
            "*.corp.example,10.0.0.0/8,intranet",
        ])
        #expect(r.schemes == [.digest, .ntlm])
        #expect(r.directFor.count == 3)
        #expect(
            try self.routing(["--parent", "http://p:1", "--parent-auth", "any"]).schemes
                == Set(ParentAuthScheme.allCases)
        )
        #expect(self.message(["--parent", "http://p:1", "--parent-auth", "kerberos"])?.contains("'kerberos'") == true)
        #expect(
            self.message(["--parent", "http://p:1", "--direct-for", "bad host!"])?.contains("--direct-for") == true
        )
        #expect(self.message(["--direct-for", "intranet"])?.contains("for --parent") == true)
    }

    @Test func routesNameDirectOrOneParentAndDecideInOrderAfterDirectFor() throws {
        let r = try self.routing([
            "--parent", "http://p1.corp:3128", "--parent", "http://p2.corp:8080",
            "--direct-for", "intranet",
            "--routes", "*.partner.example=p2.corp",
            "--routes", "*.corp.example,10.0.0.0/8=DIRECT",
            "--routes", "*.example=p1.corp:3128",
        ])
        #expect(r.routes.count == 3)
        #expect(r.route(for: "intranet") == nil)
        #expect(r.route(for: "api.partner.example") == [1])
        #expect(r.route(for: "git.corp.example") == nil)
        #expect(r.route(for: "10.1.2.3") == nil)
        // The first match wins: *.partner.example came before *.example.
        #expect(r.route(for: "www.example") == [0])
        #expect(r.route(for: "elsewhere.test") == [0, 1])
        #expect(r.route(for: "Elsewhere.Test.") == [0, 1])

        #expect(
            self.message(["--parent", "http://p:1", "--routes", "a=q"])?.contains("neither direct nor a --parent")
                == true
        )
        #expect(
            self.message(["--parent", "http://p:1", "--parent", "http://p:2", "--routes", "a=p"])?
                .contains("more than one") == true
        )
        #expect(self.message(["--parent", "http://p:1", "--routes", "bad host!=direct"])?.contains("--routes") == true)
        #expect(self.message(["--routes", "a=direct"])?.contains("for --parent") == true)
        #expect(throws: (any Error).self) { try ServeOptions.parse(["--routes", "no-equals-sign"]) }
    }
}
