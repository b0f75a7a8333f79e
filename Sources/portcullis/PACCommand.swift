import ArgumentParser
import Foundation
import PortcullisDoctor
import PortcullisPAC
import PortcullisServer

struct PACCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pac",
        abstract: "Test, explain and generate PAC (proxy auto-config) files.",
        discussion:
            "Files run in Duktape, with the helpers browsers define (Chromium's semantics), each evaluation in a child process bounded in CPU time and memory.",
        subcommands: [Test.self, Explain.self, Generate.self, EvaluateIsolated.self]
    )

    struct Test: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print what FindProxyForURL returns for each URL, or check a table of expected answers.",
            discussion: """
                Prints one line per URL: the URL, a tab, the result. With --expect TABLE, the URLs come from TABLE (lines URL<TAB>expected; # comments) and every mismatch is printed with what was expected and what came; results are compared entry by entry (PROXY a:1;DIRECT equals PROXY a:1; DIRECT).
                Exit status: 0 every answer as expected (or, without --expect, every URL answered); 1 the PAC failed (syntax error, exception, no FindProxyForURL, time or memory limit, unreadable); 2 a mismatch.
                """
        )

        @OptionGroup var evaluation: PACEvaluationOptions

        @Option(
            name: .long,
            help: ArgumentHelp("A table of URL<TAB>expected lines to check.", valueName: "file")
        )
        var expect: String?

        @Flag(name: .long, help: "Print JSON.")
        var json = false

        @Argument(help: ArgumentHelp("URLs to evaluate.", valueName: "url"))
        var urls: [String] = []

        func validate() throws {
            if self.expect == nil && self.urls.isEmpty { throw ValidationError("give URLs, or --expect TABLE") }
            if self.expect != nil && !self.urls.isEmpty {
                throw ValidationError("give URLs or --expect TABLE, not both")
            }
        }

        func run() throws {
            var rows: [(url: String, expected: String?)] = self.urls.map { ($0, nil) }
            if let expect = self.expect { rows = try ExpectTable.read(expect).map { ($0.url, $0.expected) } }
            let targets = try rows.map { row -> PACTarget in
                guard let target = PACTarget(url: row.url) else {
                    throw ValidationError("\(row.url) is not a URL (scheme://host/…)")
                }
                return target
            }
            let source = try self.evaluation.load(json: self.json)
            let run = try self.evaluation.evaluator().evaluate(
                source: source.text,
                filename: source.name,
                targets: targets
            )
            var report = PACTestReport(
                pac: PACSource.redacted(self.evaluation.pac),
                loadError: run.loadError.map(PACTestReport.Failure.init)
            )
            for (row, outcome) in zip(rows, run.outcomes) {
                var line = PACTestReport.Line(url: row.url, expected: row.expected)
                switch outcome {
                case .success(let evaluation):
                    line.result = evaluation.result
                    if let expected = row.expected {
                        line.asExpected =
                            PACResultList.normalize(expected) == PACResultList.normalize(evaluation.result)
                    }
                case .failure(let error):
                    line.error = PACTestReport.Failure(error)
                    if row.expected != nil { line.asExpected = false }
                }
                report.results.append(line)
            }
            report.finish()
            if self.json {
                print(try report.json())
            } else {
                report.printText(checking: self.expect != nil)
            }
            if report.exit != 0 { throw ExitCode(report.exit) }
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show why a URL goes where it goes: the result and every helper call, in order.",
            discussion:
                "Each helper call is printed with its arguments and answer (dnsDomainIs(\"api.corp\", \".corp\") → true). Exit 0, or 1 when the PAC fails."
        )

        @OptionGroup var evaluation: PACEvaluationOptions

        @Flag(name: .long, help: "Print JSON.")
        var json = false

        @Argument(help: ArgumentHelp("The URL to explain.", valueName: "url"))
        var url: String

        func run() throws {
            guard let target = PACTarget(url: self.url) else {
                throw ValidationError("\(self.url) is not a URL (scheme://host/…)")
            }
            let source = try self.evaluation.load(json: self.json)
            let run = try self.evaluation.evaluator().evaluate(
                source: source.text,
                filename: source.name,
                targets: [target],
                trace: true
            )
            let outcome = run.outcomes[0]
            if self.json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                var document = PACExplanation(url: target.url, host: target.host)
                switch outcome {
                case .success(let evaluation):
                    document.result = evaluation.result
                    document.calls = evaluation.calls
                    document.untracedCalls = evaluation.untracedCalls
                    document.alerts = evaluation.alerts
                case .failure(let error):
                    document.error = PACTestReport.Failure(error)
                    document.calls = run.callsBeforeFailure[0] ?? []
                }
                print(String(decoding: try encoder.encode(document), as: UTF8.self))
            } else {
                print("url:     \(target.url)")
                print("host:    \(target.host)")
                switch outcome {
                case .success(let evaluation):
                    print("result:  \(evaluation.result)")
                    if evaluation.calls.isEmpty {
                        print("calls:   none (the answer does not depend on any helper)")
                    } else {
                        print("calls:")
                        Self.printNumbered(evaluation.calls)
                        if evaluation.untracedCalls > 0 {
                            print("  … and \(evaluation.untracedCalls) more calls, not listed")
                        }
                    }
                    for alert in evaluation.alerts { print("alert:   \(alert)") }
                case .failure(let error):
                    print("error:   \(error)")
                    let calls = run.callsBeforeFailure[0] ?? []
                    if !calls.isEmpty {
                        print("calls before it:")
                        Self.printNumbered(calls)
                    }
                }
            }
            if case .failure = outcome { throw ExitCode(1) }
        }

        /// `  1  dnsDomainIs("a.corp", ".corp") → true`, numbers right-aligned.
        private static func printNumbered(_ calls: [PACCall]) {
            let width = String(calls.count).count
            for (index, call) in calls.enumerated() {
                let number = String(index + 1)
                print("  \(String(repeating: " ", count: width - number.count))\(number)  \(call)")
            }
        }
    }

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a PAC file built from serve's routing rules.",
            discussion:
                "Hosts the proxy reaches directly (direct-for, routes via direct) go DIRECT, everything else to --proxy, in the rules' order (the first match wins, as in the proxy). Networks match literal addresses only, as in the proxy."
        )

        @OptionGroup var settings: ServeOptions

        @Option(name: .long, help: ArgumentHelp("YAML file with serve's settings.", valueName: "file"))
        var config: String?

        @Option(name: .long, help: ArgumentHelp("This proxy's address as clients reach it.", valueName: "host:port"))
        var proxy: String

        func run() throws {
            var options = self.settings
            do {
                if let config = self.config { options = try options.layered(over: ServeOptions.load(yamlFile: config)) }
                print(try PACGenerator.generate(options: options, proxy: self.proxy), terminator: "")
            } catch let error as ServeError {
                throw ValidationError(error.message)
            } catch let error as PACGenerator.Failure {
                throw ValidationError(error.description)
            }
        }
    }

    /// The child process of `PACEvaluator`; not for people.
    struct EvaluateIsolated: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "evaluate-isolated",
            abstract: "Evaluate a PAC request from standard input (used by the other pac commands).",
            shouldDisplay: false
        )

        func run() throws {
            let status = PACChild.run()
            if status != 0 { throw ExitCode(status) }
        }
    }
}

/// The options every evaluating command takes.
struct PACEvaluationOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("The PAC file: a path, or an http:// or https:// URL.", valueName: "file|url")
    )
    var pac: String

    @Option(
        name: .customLong("my-ip"),
        help: ArgumentHelp(
            "This machine's address as myIpAddress() sees it (repeatable: myIpAddressEx() returns all; myIpAddress() the first IPv4).",
            valueName: "ip"
        )
    )
    var myIP: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Answer dnsResolve, isResolvable, isInNet… for HOST with these addresses, without DNS (repeatable; HOST= makes it unresolvable).",
            valueName: "host=ip[,ip]"
        )
    )
    var resolve: [String] = []

    @Flag(name: .customLong("no-dns"), help: "Names not given with --resolve do not resolve (no DNS lookups at all).")
    var noDNS = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The clock for weekdayRange, dateRange, timeRange and Date: an ISO 8601 time whose offset is also the local time zone (2026-03-13T14:20:30+01:00).",
            valueName: "time"
        )
    )
    var now: String?

    @Option(
        name: .long,
        help: ArgumentHelp("CPU seconds for loading the file, and for each URL.", valueName: "seconds")
    )
    var timeLimit: Double = 1

    @Option(name: .long, help: ArgumentHelp("Memory for the script's heap, in MiB.", valueName: "MiB"))
    var memoryLimit: Int = 64

    @Option(name: .long, help: ArgumentHelp("CA certificates (PEM) for an https:// PAC URL.", valueName: "file"))
    var pacCacert: String?

    func validate() throws {
        guard self.timeLimit > 0, self.timeLimit <= 60 else {
            throw ValidationError("--time-limit takes 0 < seconds ≤ 60")
        }
        guard (8...4096).contains(self.memoryLimit) else { throw ValidationError("--memory-limit takes 8 to 4096 MiB") }
        _ = try self.environment()
    }

    func environment() throws -> PACEnvironment {
        for ip in self.myIP where PACAddressText.isLiteral(ip) == false {
            throw ValidationError("--my-ip \(ip) is not an IP address")
        }
        var hosts: [String: [String]] = [:]
        for mapping in self.resolve {
            guard let equals = mapping.firstIndex(of: "="), equals != mapping.startIndex else {
                throw ValidationError("--resolve takes HOST=IP[,IP], not \(mapping)")
            }
            let addresses = mapping[mapping.index(after: equals)...].split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            for address in addresses where !PACAddressText.isLiteral(address) {
                throw ValidationError("--resolve \(mapping): \(address) is not an IP address")
            }
            hosts[String(mapping[..<equals]).lowercased(), default: []] += addresses
        }
        var environment = PACEnvironment(myAddresses: self.myIP, hosts: hosts, useDNS: !self.noDNS)
        if let now = self.now {
            guard let parsed = PACEnvironment.parseNow(now) else {
                throw ValidationError(
                    "--now takes an ISO 8601 time with its offset, like 2026-03-13T14:20:30+01:00 or …Z"
                )
            }
            environment.now = parsed.instant
            environment.utcOffset = parsed.utcOffset
        }
        return environment
    }

    func evaluator() throws -> PACEvaluator {
        PACEvaluator(environment: try self.environment(), cpuLimit: self.timeLimit, memoryLimit: self.memoryLimit << 20)
    }

    /// The file's text; a file that cannot be read ends the command with status 1.
    func load(json: Bool) throws -> PACSource.Loaded {
        do {
            return try PACSource.load(self.pac, caFile: self.pacCacert)
        } catch {
            if json {
                var report = PACTestReport(pac: PACSource.redacted(self.pac), loadError: PACTestReport.Failure(error))
                report.finish()
                if let text = try? report.json() { print(text) }
            } else {
                FileHandle.standardError.write(Data("portcullis pac: \(error)\n".utf8))
            }
            throw ExitCode(1)
        }
    }
}

/// `--expect` tables: `URL<TAB>expected`, `#` comments and blank lines skipped.
enum ExpectTable {
    static func read(_ path: String) throws -> [(url: String, expected: String)] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ValidationError("cannot read --expect \(path)")
        }
        var rows: [(String, String)] = []
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = line.hasSuffix("\r") ? line.dropLast() : line
            if line.trimmingCharacters(in: .whitespaces).isEmpty || line.hasPrefix("#") { continue }
            guard let tab = line.firstIndex(of: "\t") else {
                throw ValidationError("\(path):\(number + 1): want URL<TAB>expected")
            }
            rows.append((String(line[..<tab]), String(line[line.index(after: tab)...])))
        }
        guard !rows.isEmpty else { throw ValidationError("\(path) has no rows") }
        return rows
    }
}

enum PACAddressText {
    static func isLiteral(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}

/// A PAC result compared entry by entry: `PROXY a:1;DIRECT` and `PROXY  a:1; DIRECT` are one.
enum PACResultList {
    static func normalize(_ result: String) -> String {
        result.split(separator: ";", omittingEmptySubsequences: false)
            .map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ") }
            .filter { !$0.isEmpty }
            .joined(separator: "; ")
    }
}

/// What `pac test` prints, as text or JSON.
struct PACTestReport: Encodable {
    struct Failure: Encodable {
        var kind: String
        var message: String

        init(_ error: PACError) {
            self.kind = error.kind
            self.message = error.description
        }
    }

    struct Line: Encodable {
        var url: String
        var result: String?
        var error: Failure?
        var expected: String?
        var asExpected: Bool?

        enum CodingKeys: String, CodingKey {
            case url, result, error, expected
            case asExpected = "as_expected"
        }
    }

    var pac: String
    var loadError: Failure?
    var results: [Line] = []
    var exit: Int32 = 0

    enum CodingKeys: String, CodingKey {
        case pac, results, exit
        case loadError = "load_error"
    }

    mutating func finish() {
        if self.loadError != nil || self.results.contains(where: { $0.error != nil }) {
            self.exit = 1
        } else if self.results.contains(where: { $0.asExpected == false }) {
            self.exit = 2
        }
    }

    func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    func printText(checking: Bool) {
        if let loadError = self.loadError {
            FileHandle.standardError.write(Data("portcullis pac: \(self.pac): \(loadError.message)\n".utf8))
            return
        }
        guard checking else {
            for line in self.results {
                print("\(line.url)\t\(line.result ?? "error: \(line.error?.message ?? "")")")
            }
            return
        }
        var matched = 0
        for line in self.results {
            if line.asExpected == true {
                matched += 1
                continue
            }
            print("mismatch  \(line.url)")
            print("  expected  \(line.expected ?? "")")
            if let error = line.error {
                print("  actual    error: \(error.message)")
            } else {
                print("  actual    \(line.result ?? "")")
            }
        }
        let failed = self.results.filter { $0.error != nil }.count
        let mismatched = self.results.count - matched - failed
        print(
            "\(self.results.count) URLs: \(matched) as expected, \(mismatched) mismatched\(failed > 0 ? ", \(failed) failed" : "")"
        )
    }
}

/// `pac explain --json`.
struct PACExplanation: Encodable {
    var url: String
    var host: String
    var result: String?
    var error: PACTestReport.Failure?
    var calls: [PACCall] = []
    var untracedCalls = 0
    var alerts: [String] = []

    enum CodingKeys: String, CodingKey {
        case url, host, result, error, calls, alerts
        case untracedCalls = "untraced_calls"
    }
}
