import Testing

@testable import PortcullisPAC

/// The Duktape engine in-process: loading, errors, traces, the memory bound and the fixed clock.
/// (Time bounds need the child process: the integration tests drive those through the binary.)
@Suite struct PACScriptTests {
    let environment = PACEnvironment(
        myAddresses: ["10.1.2.3", "fd00::3"],
        hosts: [
            "intranet.corp": ["10.20.0.5"], "dual.corp": ["2001:db8::5", "192.0.2.5"], "v6only.corp": ["2001:db8::6"],
        ],
        useDNS: false
    )

    func evaluate(_ source: String, url: String = "http://www.example.com/", trace: Bool = false) throws
        -> PACEvaluation
    {
        let script = try PACScript(source: source, environment: self.environment)
        let target = try #require(PACTarget(url: url))
        return try script.findProxy(url: target.url, host: target.host, trace: trace).get()
    }

    @Test func aPlainFileAnswers() throws {
        let evaluation = try self.evaluate(
            #"function FindProxyForURL(url, host) { return host == "www.example.com" ? "PROXY p:3128; DIRECT" : "DIRECT"; }"#
        )
        #expect(evaluation.result == "PROXY p:3128; DIRECT")
    }

    @Test func findProxyForURLExIsPreferred() throws {
        let evaluation = try self.evaluate(
            """
            function FindProxyForURL(url, host) { return "PROXY old:1"; }
            function FindProxyForURLEx(url, host) { return "PROXY new:1"; }
            """
        )
        #expect(evaluation.result == "PROXY new:1")
    }

    @Test func theTraceListsHelperCallsInOrderWithTheirAnswers() throws {
        let evaluation = try self.evaluate(
            """
            function FindProxyForURL(url, host) {
                if (isPlainHostName(host) || dnsDomainIs(host, ".corp")) return "DIRECT";
                if (isInNet(dnsResolve("intranet.corp"), "10.0.0.0", "255.0.0.0")) return "PROXY p:1";
                return "DIRECT";
            }
            """,
            trace: true
        )
        #expect(evaluation.result == "PROXY p:1")
        #expect(
            evaluation.calls.map(\.description) == [
                #"isPlainHostName("www.example.com") → false"#,
                #"dnsDomainIs("www.example.com", ".corp") → false"#,
                #"dnsResolve("intranet.corp") → "10.20.0.5""#,
                #"isInNet("10.20.0.5", "10.0.0.0", "255.0.0.0") → true"#,
            ]
        )
    }

    @Test func untracedEvaluationsRecordNothing() throws {
        let evaluation = try self.evaluate(#"function FindProxyForURL(u, h) { isPlainHostName(h); return "DIRECT"; }"#)
        #expect(evaluation.calls.isEmpty)
    }

    @Test func theAddressHelpersUseTheEnvironment() throws {
        let evaluation = try self.evaluate(
            """
            function FindProxyForURL(url, host) {
                return [myIpAddress(), myIpAddressEx(), dnsResolve("dual.corp"), dnsResolveEx("dual.corp"),
                    dnsResolve("v6only.corp"), isResolvable("v6only.corp"), isResolvableEx("v6only.corp"),
                    isResolvable("nowhere.corp"), isInNet("intranet.corp", "10.20.0.0", "255.255.0.0"),
                    isInNetEx("2001:db8::5", "2001:db8::/32"), isInNetEx("192.0.2.5", "192.0.2.0/24"),
                    sortIpAddressList("10.0.0.2;2001:db8::1; 10.0.0.1;;"), sortIpAddressList("x;10.0.0.1"),
                    convert_addr("255.255.255.255"), getClientVersion()].map(String).join("|");
            }
            """
        )
        #expect(
            evaluation.result.split(separator: "|").map(String.init) == [
                "10.1.2.3", "10.1.2.3;fd00::3", "192.0.2.5", "2001:db8::5;192.0.2.5",
                "null", "false", "true",
                "false", "true",
                "true", "true",
                "2001:db8::1;10.0.0.1;10.0.0.2", "false",
                "-1", "1.0",
            ]
        )
    }

    @Test func alertsAreCollected() throws {
        let evaluation = try self.evaluate(
            #"function FindProxyForURL(u, h) { alert("checking " + h); return "DIRECT"; }"#
        )
        #expect(evaluation.alerts == ["checking www.example.com"])
    }

    @Test func aSyntaxErrorNamesItsLineAndColumn() {
        #expect(throws: PACError.syntax(message: "SyntaxError: empty expression not allowed", line: 2, column: 13)) {
            try PACScript(
                source: "function FindProxyForURL(url, host) {\n    var x = ;\n}",
                environment: self.environment
            )
        }
        // At the end of the file: the last token.
        #expect(throws: PACError.syntax(message: "SyntaxError: parse error", line: 2, column: 14)) {
            try PACScript(
                source: "function FindProxyForURL(url, host) {\n    return 1 +\n",
                environment: self.environment
            )
        }
    }

    @Test(arguments: [
        // Duktape raises its generic "parse error" on the token after the one at fault, and
        // names the line its lexer reached: the position is the offending token's.
        ("function FindProxyForURL(url, host) {\n    return \"DIRECT\";\n}\n}\n\n\n", 4, 1),
        ("function FindProxyForURL(url, host) {\n    return \"DIRECT\";\n}}\nvar x = 1;\n", 3, 2),
        ("else { }\n", 1, 1),
        ("var x = 1 +* 2;\n", 1, 12),
        ("var y = 1;\nvar = \"DIRECT\";\n", 2, 5),
        ("function f() {\n  return \"a\" \"b\";\n}", 2, 14),
    ])
    func syntaxErrorsPointAtTheOffendingToken(source: String, line: Int, column: Int) {
        do {
            _ = try PACScript(source: source, environment: self.environment)
            Issue.record("compiled")
        } catch {
            guard case .syntax(_, let gotLine, let gotColumn) = error else {
                Issue.record("\(error)")
                return
            }
            #expect(gotLine == line)
            #expect(gotColumn == column)
        }
    }

    @Test func errorsWhileLoadingOrEvaluatingAreReported() throws {
        #expect(throws: PACError.exception(message: "Error: not today", line: 2)) {
            try PACScript(source: "var x = 1;\nthrow new Error('not today');", environment: self.environment)
        }
        #expect(throws: PACError.noFindProxyForURL) {
            try PACScript(source: "function findProxyForUrl(u, h) { return 'DIRECT'; }", environment: self.environment)
        }
        let script = try PACScript(
            source:
                "function FindProxyForURL(u, h) {\n  if (h == 'a') return 42;\n  if (h == 'b') return;\n  undefinedHelper(h);\n}",
            environment: self.environment
        )
        #expect(script.findProxy(url: "http://a/", host: "a") == .failure(.notAString(type: "a number")))
        #expect(script.findProxy(url: "http://b/", host: "b") == .failure(.notAString(type: "undefined")))
        #expect(
            script.findProxy(url: "http://c/", host: "c")
                == .failure(.exception(message: "ReferenceError: identifier 'undefinedHelper' undefined", line: 4))
        )
    }

    @Test func memoryPastTheLimitIsRefusedAndNamed() throws {
        let script = try PACScript(
            source: #"function FindProxyForURL(u, h) { var s = "x"; while (true) s = s + s; }"#,
            environment: self.environment,
            memoryLimit: 8 << 20
        )
        #expect(script.findProxy(url: "http://a/", host: "a") == .failure(.memoryLimit(bytes: 8 << 20)))
        // The heap is still usable afterwards.
        let second = try PACScript(
            source: #"function FindProxyForURL(u, h) { return "DIRECT"; }"#,
            environment: self.environment
        )
        #expect(try second.findProxy(url: "http://a/", host: "a").get().result == "DIRECT")
    }

    @Test func deepRecursionIsAnException() throws {
        let script = try PACScript(
            source: "function f(n) { return 1 + f(n + 1); }\nfunction FindProxyForURL(u, h) { return f(0); }",
            environment: self.environment
        )
        guard case .failure(.exception(let message, _)) = script.findProxy(url: "http://a/", host: "a") else {
            Issue.record("expected an exception")
            return
        }
        #expect(message.contains("RangeError"))
    }

    @Test func aFixedClockIsWhatDateSees() throws {
        var environment = self.environment
        environment.now = 1_773_567_045  // 2026-03-15T09:30:45Z
        let script = try PACScript(
            source:
                #"function FindProxyForURL(u, h) { return String(Date.now()) + "|" + new Date().getUTCHours() + "|" + new Date(0).getTime() + "|" + (new Date() instanceof Date); }"#,
            environment: environment
        )
        #expect(try script.findProxy(url: "http://a/", host: "a").get().result == "1773567045000|9|0|true")
    }

    @Test(arguments: [
        ("http://www.Example.com:8080/path?q", "www.example.com"),
        ("https://user:pw@host.corp/", "host.corp"),
        ("http://[2001:db8::1]:80/", "2001:db8::1"),
        ("ftp://files.corp", "files.corp"),
    ])
    func targetsNameTheHostBrowsersPass(url: String, host: String) {
        #expect(PACTarget(url: url)?.host == host)
    }

    @Test func aURLWithoutAHostIsNoTarget() {
        #expect(PACTarget(url: "www.example.com") == nil)
        #expect(PACTarget(url: "http:///path") == nil)
    }

    @Test func nowParsesWithItsOffset() {
        let parsed = PACEnvironment.parseNow("2026-03-15T10:30:45+01:00")
        #expect(parsed?.instant == 1_773_567_045)
        #expect(parsed?.utcOffset == 3600)
        #expect(PACEnvironment.parseNow("2026-03-15T09:30:45Z")?.instant == 1_773_567_045)
        #expect(PACEnvironment.parseNow("2026-02-30T00:00:00Z") == nil)
        #expect(PACEnvironment.parseNow("2026-03-15") == nil)
    }

    @Test func civilDatesRoundTrip() {
        let fields = CivilDate.fields(1_773_567_045, offset: 3600)
        #expect(fields == CivilDate.Fields(year: 2026, month: 2, day: 15, hour: 10, minute: 30, second: 45, weekday: 0))
        #expect(CivilDate.fields(-1, offset: 0).year == 1969)
    }
}
