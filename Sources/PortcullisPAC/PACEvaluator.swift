import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A URL to evaluate and the host `FindProxyForURL` receives with it.
public struct PACTarget: Codable, Equatable, Sendable {
    public var url: String
    public var host: String

    public init(url: String, host: String) {
        self.url = url
        self.host = host
    }

    /// The host browsers pass for `url`: lowercased, without user information, port or the
    /// brackets of an IPv6 literal. Nil when `url` has no `scheme://host`.
    public init?(url: String) {
        guard let schemeEnd = url.range(of: "://"), !url[..<schemeEnd.lowerBound].isEmpty else { return nil }
        var authority = url[schemeEnd.upperBound...].prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        let host: Substring
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
        } else {
            host = authority.prefix { $0 != ":" }
        }
        guard !host.isEmpty else { return nil }
        self.url = url
        self.host = host.lowercased()
    }
}

/// The outcome of evaluating one PAC file for some URLs.
public struct PACRun: Sendable {
    /// Set when the file itself failed (does not compile, throws while loading, has no
    /// `FindProxyForURL`, exceeded a limit while loading): then no URL was evaluated.
    public var loadError: PACError?
    /// One per target, in order.
    public var outcomes: [Result<PACEvaluation, PACError>]
    /// For traced evaluations that failed: the helper calls made before the failure, by index.
    public var callsBeforeFailure: [Int: [PACCall]] = [:]
}

/// Evaluates PAC files in a child process (`portcullis pac evaluate-isolated`) bounded in CPU
/// time (`ITIMER_PROF`, reset for each URL) and memory (the heap's allocator), watched by a
/// wall-clock deadline here. A hostile file costs at most one limit per URL and never the
/// caller: a child that dies is replaced for the URLs after the one it died on.
///
/// Blocking: call from a thread that may block (never an event loop).
public struct PACEvaluator: Sendable {
    /// The portcullis executable to run as the child.
    public var executable: String
    public var environment: PACEnvironment
    /// CPU seconds for loading the file, and again for each URL.
    public var cpuLimit: Double
    public var memoryLimit: Int

    public static let maximumSourceBytes = 8 << 20

    public init(
        executable: String = PACEvaluator.currentExecutable,
        environment: PACEnvironment = PACEnvironment(),
        cpuLimit: Double = 1,
        memoryLimit: Int = 64 << 20
    ) {
        self.executable = executable
        self.environment = environment
        self.cpuLimit = cpuLimit
        self.memoryLimit = memoryLimit
    }

    /// This process's own executable (`/proc/self/exe`).
    public static var currentExecutable: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return CommandLine.arguments.first ?? "portcullis" }
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func evaluate(source: String, filename: String = "proxy.pac", targets: [PACTarget], trace: Bool = false)
        -> PACRun
    {
        let sourceBytes = source.utf8.count
        guard sourceBytes <= Self.maximumSourceBytes else {
            let error = PACError.tooLarge(limit: Self.maximumSourceBytes)
            return PACRun(loadError: error, outcomes: targets.map { _ in .failure(error) })
        }
        var outcomes: [Result<PACEvaluation, PACError>?] = Array(repeating: nil, count: targets.count)
        var callsBeforeFailure: [Int: [PACCall]] = [:]
        var next = 0
        repeat {
            let request = PACChildRequest(
                source: source,
                filename: filename,
                environment: self.environment,
                targets: Array(targets[next...]),
                trace: trace,
                cpuLimit: self.cpuLimit,
                memoryLimit: self.memoryLimit
            )
            let batch = self.runChild(request)
            if let loadError = batch.loadError {
                for index in next..<targets.count where outcomes[index] == nil { outcomes[index] = .failure(loadError) }
                return PACRun(loadError: loadError, outcomes: outcomes.map { $0! })
            }
            for (offset, outcome) in batch.outcomes.enumerated() { outcomes[next + offset] = outcome }
            for (offset, calls) in batch.callsBeforeFailure { callsBeforeFailure[next + offset] = calls }
            next += batch.outcomes.count
            if next < targets.count, let failure = batch.failure {
                // The child died on this URL: it gets the reason; a new child does the rest.
                outcomes[next] = .failure(failure)
                next += 1
            } else if next < targets.count {
                outcomes[next] = .failure(.engine("the evaluator stopped without an answer"))
                next += 1
            }
        } while next < targets.count
        return PACRun(loadError: nil, outcomes: outcomes.map { $0! }, callsBeforeFailure: callsBeforeFailure)
    }

    /// Loads the file alone: nil when it loads and defines `FindProxyForURL`.
    public func check(source: String, filename: String = "proxy.pac") -> PACError? {
        self.evaluate(source: source, filename: filename, targets: []).loadError
    }

    private struct Batch {
        var loadError: PACError?
        var outcomes: [Result<PACEvaluation, PACError>] = []
        var callsBeforeFailure: [Int: [PACCall]] = [:]
        /// Why the child ended before answering every URL.
        var failure: PACError?
    }

    private func runChild(_ request: PACChildRequest) -> Batch {
        let input: Data
        do {
            input = try JSONEncoder().encode(request)
        } catch {
            return Batch(loadError: .engine("could not encode the request: \(error)"))
        }
        let child: SpawnedChild
        do {
            child = try SpawnedChild(executable: self.executable, arguments: ["pac", "evaluate-isolated"])
        } catch {
            return Batch(loadError: .engine("could not start \(self.executable): \(error)"))
        }
        defer { child.reap() }
        // The child reads its whole request before doing anything, so this write cannot
        // deadlock with its output; a child that dies early makes it fail (EPIPE), not block.
        child.send(input)

        var batch = Batch()
        var loaded = false
        var lines = LineReader(fd: child.output)
        let slack = self.environment.dnsBudget + 2
        while true {
            let budget = self.cpuLimit + slack
            switch lines.next(timeout: budget) {
            case .line(let line):
                guard let reply = try? JSONDecoder().decode(PACChildReply.self, from: line) else {
                    child.kill()
                    let error = PACError.engine("unreadable answer from the evaluator")
                    if loaded { batch.failure = error } else { batch.loadError = error }
                    return batch
                }
                if let loadError = reply.loadError {
                    batch.loadError = loadError
                    return batch
                }
                if reply.loaded == true {
                    loaded = true
                } else if let evaluation = reply.evaluation {
                    batch.outcomes.append(.success(evaluation))
                } else if let error = reply.error {
                    if let calls = reply.calls, !calls.isEmpty {
                        batch.callsBeforeFailure[batch.outcomes.count] = calls
                    }
                    batch.outcomes.append(.failure(error))
                }
                if loaded, batch.outcomes.count == request.targets.count { return batch }
            case .timedOut:
                child.kill()
                let error = PACError.timeLimit(seconds: self.cpuLimit)
                if loaded { batch.failure = error } else { batch.loadError = error }
                return batch
            case .end:
                let status = child.reap()
                let error = self.childFailure(status: status, stderr: child.errorOutput())
                if loaded { batch.failure = error } else { batch.loadError = error }
                return batch
            }
        }
    }

    private func childFailure(status: Int32, stderr: String) -> PACError {
        // WIFSIGNALED / WTERMSIG / WEXITSTATUS, which Swift does not import as macros.
        let signal = status & 0x7F
        if signal != 0, signal != 0x7F {
            if signal == SIGPROF || signal == SIGXCPU { return .timeLimit(seconds: self.cpuLimit) }
            return .engine("the evaluator was killed by signal \(signal)")
        }
        let code = (status >> 8) & 0xFF
        if code == PACScriptExit.fatal, stderr.contains("alloc") { return .memoryLimit(bytes: self.memoryLimit) }
        let detail = stderr.split(separator: "\n").last.map(String.init) ?? ""
        return .engine("the evaluator exited with status \(code)\(detail.isEmpty ? "" : ": \(detail)")")
    }
}

/// What the parent sends the child, as one JSON document on its standard input.
struct PACChildRequest: Codable {
    var source: String
    var filename: String
    var environment: PACEnvironment
    var targets: [PACTarget]
    var trace: Bool
    var cpuLimit: Double
    var memoryLimit: Int
}

/// One line of the child's standard output.
struct PACChildReply: Codable {
    var loaded: Bool?
    var loadError: PACError?
    var evaluation: PACEvaluation?
    var error: PACError?
    /// With `error`, when traced: the calls made before it.
    var calls: [PACCall]?
}

/// A child process with pipes on its standard streams (posix_spawn).
private final class SpawnedChild {
    let pid: pid_t
    let input: Int32
    let output: Int32
    let errors: Int32
    private var status: Int32?

    struct SpawnError: Error, CustomStringConvertible {
        var code: Int32
        var description: String { String(cString: strerror(self.code)) }
    }

    init(executable: String, arguments: [String]) throws {
        // SIGPIPE would end this process when a child dies before reading its input.
        signal(SIGPIPE, SIG_IGN)
        var inputPipe: [Int32] = [0, 0]
        var outputPipe: [Int32] = [0, 0]
        var errorPipe: [Int32] = [0, 0]
        guard Self.pipeClosedOnExec(&inputPipe) else { throw SpawnError(code: errno) }
        guard Self.pipeClosedOnExec(&outputPipe) else {
            close(inputPipe[0])
            close(inputPipe[1])
            throw SpawnError(code: errno)
        }
        guard Self.pipeClosedOnExec(&errorPipe) else {
            for fd in inputPipe + outputPipe { close(fd) }
            throw SpawnError(code: errno)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inputPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outputPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errorPipe[1], 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(inputPipe[0])
        close(outputPipe[1])
        close(errorPipe[1])
        guard result == 0 else {
            close(inputPipe[1])
            close(outputPipe[0])
            close(errorPipe[0])
            throw SpawnError(code: result)
        }
        self.pid = pid
        self.input = inputPipe[1]
        self.output = outputPipe[0]
        self.errors = errorPipe[0]
    }

    /// A pipe whose ends other children do not inherit (the child gets copies through dup2).
    private static func pipeClosedOnExec(_ fds: inout [Int32]) -> Bool {
        guard pipe(&fds) == 0 else { return false }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return true
    }

    func send(_ data: Data) {
        data.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(self.input, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    break
                }
                offset += written
            }
        }
        close(self.input)
    }

    func kill() { _ = Glibc.kill(self.pid, SIGKILL) }

    /// Waits for the child (once) and returns its wait status.
    @discardableResult
    func reap() -> Int32 {
        if let status = self.status { return status }
        var status: Int32 = 0
        while waitpid(self.pid, &status, 0) < 0, errno == EINTR {}
        self.status = status
        close(self.output)
        return status
    }

    /// What the child wrote on its standard error (the first 4 KiB), once it has ended.
    func errorOutput() -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var total = 0
        while total < buffer.count {
            let count = read(self.errors, &buffer[total], buffer.count - total)
            if count <= 0 { break }
            total += count
        }
        close(self.errors)
        return String(decoding: buffer[..<total], as: UTF8.self)
    }
}

/// Lines from a pipe, each waited for with a deadline.
private struct LineReader {
    enum Next {
        case line(Data)
        case timedOut
        case end
    }

    let fd: Int32
    private var buffer = Data()
    private var ended = false

    init(fd: Int32) { self.fd = fd }

    mutating func next(timeout: Double) -> Next {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = self.buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = self.buffer[self.buffer.startIndex..<newline]
                self.buffer = Data(self.buffer[(newline + 1)...])
                return .line(Data(line))
            }
            if self.ended { return .end }
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { return .timedOut }
            var descriptor = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(min(remaining * 1000, 60_000)) + 1)
            if ready < 0, errno == EINTR { continue }
            if ready <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = read(self.fd, &chunk, chunk.count)
            if count < 0, errno == EINTR { continue }
            if count <= 0 {
                self.ended = true
            } else {
                self.buffer.append(contentsOf: chunk[..<count])
                // An answer is a few KiB; a child writing megabytes without a newline is broken.
                if self.buffer.count > 16 << 20 { self.ended = true }
            }
        }
    }
}
