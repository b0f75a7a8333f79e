import CDuktape
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A PAC file loaded in its own Duktape heap, ready to answer `FindProxyForURL` calls.
///
/// It enforces the memory bound itself (its allocator refuses past `memoryLimit`) but not time:
/// Debian's Duktape is built without an execution timeout and cannot be interrupted, so
/// untrusted files run in a child process (`PACEvaluator`) that the CPU-time limit kills. Errors
/// Duktape raises while a helper written in Swift runs unwind through that helper's frame with
/// `longjmp`; that leaks what the frame held, which is one more reason a heap lives in a
/// short-lived process. Not thread-safe: one thread uses one script.
public final class PACScript {
    public static let maximumTracedCalls = 1000

    private let state: PACEngineState
    private let context: OpaquePointer
    private let retained: Unmanaged<PACEngineState>

    /// Compiles and runs `source`; throws if it does not compile, throws while loading or
    /// defines no `FindProxyForURL`.
    public init(
        source: String,
        filename: String = "proxy.pac",
        environment: PACEnvironment,
        memoryLimit: Int = 64 << 20
    ) throws(PACError) {
        let state = PACEngineState(environment: environment, memoryLimit: memoryLimit)
        let retained = Unmanaged.passRetained(state)
        guard
            let context = duk_create_heap(
                pacAllocate,
                pacReallocate,
                pacFree,
                retained.toOpaque(),
                pacFatal
            )
        else {
            retained.release()
            throw .engine("could not create a JavaScript heap")
        }
        self.state = state
        self.context = context
        self.retained = retained
        try self.installHelpers()
        try self.load(source: source, filename: filename)
    }

    deinit {
        duk_destroy_heap(self.context)
        self.retained.release()
    }

    /// The `FindProxyForURLEx` the file defines (IPv6-aware browsers call it first), or its
    /// `FindProxyForURL`, called with `url` and `host`.
    public func findProxy(url: String, host: String, trace: Bool = false) -> Result<PACEvaluation, PACError> {
        let ctx = self.context
        self.state.startEvaluation(tracing: trace)
        let top = duk_get_top(ctx)
        defer { duk_set_top(ctx, top) }
        var name = "FindProxyForURLEx"
        if duk_get_global_string(ctx, name) == 0 || duk_is_function(ctx, -1) == 0 {
            duk_pop(ctx)
            name = "FindProxyForURL"
            guard duk_get_global_string(ctx, name) != 0, duk_is_function(ctx, -1) != 0 else {
                return .failure(.noFindProxyForURL)
            }
        }
        Self.push(ctx, .string(url))
        Self.push(ctx, .string(host))
        if duk_pcall(ctx, 2) != 0 {
            return .failure(self.state.limitError() ?? self.exception(at: -1))
        }
        guard duk_get_type(ctx, -1) == DUK_TYPE_STRING else {
            return .failure(.notAString(type: Self.typeName(ctx, -1)))
        }
        let result = Self.value(ctx, -1).string
        return .success(
            PACEvaluation(
                result: result,
                calls: self.state.calls,
                untracedCalls: self.state.untracedCalls,
                alerts: self.state.alerts
            )
        )
    }

    /// The helper calls of the last evaluation, whatever its outcome (traced evaluations only):
    /// what led up to an exception or a wrong answer.
    public var lastCalls: [PACCall] { self.state.calls }

    /// `alert()` messages from loading the file.
    public var loadAlerts: [String] { self.state.alerts }

    // MARK: - Loading

    private func installHelpers() throws(PACError) {
        let ctx = self.context
        for native in PACNative.allCases {
            duk_push_c_function(ctx, pacNativeTrampoline, portcullis_duk_varargs())
            duk_set_magic(ctx, -1, duk_int_t(native.rawValue))
            duk_put_global_string(ctx, native.globalName)
        }
        try self.run(PACPrelude.source, filename: "portcullis-helpers.js")
        if let now = self.state.environment.now {
            try self.run(PACPrelude.fixedClock(milliseconds: now * 1000), filename: "portcullis-clock.js")
        }
    }

    private func run(_ source: String, filename: String) throws(PACError) {
        let ctx = self.context
        let compiled = source.utf8CString.withUnsafeBufferPointer {
            portcullis_duk_pcompile(ctx, $0.baseAddress, duk_size_t($0.count - 1), filename)
        }
        guard compiled == 0 else {
            defer { duk_pop(ctx) }
            throw self.state.limitError() ?? .engine("\(filename) does not compile: \(Self.value(ctx, -1).string)")
        }
        guard duk_pcall(ctx, 0) == 0 else {
            defer { duk_pop(ctx) }
            throw self.state.limitError() ?? .engine("\(filename) failed: \(Self.value(ctx, -1).string)")
        }
        duk_pop(ctx)
    }

    private func load(source: String, filename: String) throws(PACError) {
        let ctx = self.context
        self.state.startEvaluation(tracing: false)
        let bytes = Array(source.utf8)
        if let error = self.compileError(bytes, filename: filename) {
            if let limit = self.state.limitError() { throw limit }
            throw self.syntaxError(error, source: bytes, filename: filename)
        }
        // The compiled program is on the stack.
        guard duk_pcall(ctx, 0) == 0 else {
            defer { duk_pop(ctx) }
            throw self.state.limitError() ?? self.exception(at: -1)
        }
        duk_pop(ctx)
        let defined =
            ["FindProxyForURLEx", "FindProxyForURL"].contains { name in
                defer { duk_pop(ctx) }
                return duk_get_global_string(ctx, name) != 0 && duk_is_function(ctx, -1) != 0
            }
        guard defined else { throw .noFindProxyForURL }
    }

    /// Compiles `bytes`; on success the function is left on the stack and nil returned, on
    /// failure the error's message (nothing left on the stack).
    private func compileError(_ bytes: [UInt8], filename: String) -> String? {
        let ctx = self.context
        // Terminated, so that even an empty file has an address to pass.
        let status = (bytes + [0]).withUnsafeBufferPointer { buffer -> duk_int_t in
            let base = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            return portcullis_duk_pcompile(ctx, base, duk_size_t(buffer.count - 1), filename)
        }
        guard status != 0 else { return nil }
        defer { duk_pop(ctx) }
        return Self.value(ctx, -1).string
    }

    /// Duktape names a line — the line its lexer had reached, which can be past the offending
    /// token — and no column. The position is found by compiling prefixes of the file: the lexer
    /// reads one character past the token it fails on and flags the error "end of input" when
    /// that character is missing, so the shortest prefix that fails with the same message and
    /// without the flag ends just past the offending token (after any white space). An error
    /// only "end of input" shows points at the file's last token.
    private func syntaxError(_ message: String, source: [UInt8], filename: String) -> PACError {
        let parsed = Self.splitPosition(message)
        func failsHere(_ length: Int) -> Bool {
            guard let error = self.compileError(Array(source[..<length]), filename: filename) else { return false }
            let prefix = Self.splitPosition(error)
            return prefix.message == parsed.message && !prefix.endOfInput
        }
        var end = source.count
        if !parsed.endOfInput, !source.isEmpty {
            // A bounded search: about 23 compiles for a file of the largest size allowed.
            var low = 1
            var high = source.count
            while low < high {
                let middle = (low + high) / 2
                if failsHere(middle) { high = middle } else { low = middle + 1 }
                if self.state.limitError() != nil { break }
            }
            end = low - 1
        }
        func isSpace(_ byte: UInt8) -> Bool {
            byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n")
                || byte == UInt8(ascii: "\r")
        }
        func isWordByte(_ byte: UInt8) -> Bool {
            byte >= 0x80 || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "$")
                || (byte | 0x20 >= UInt8(ascii: "a") && byte | 0x20 <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
        }
        /// The first byte of the last token that ends before `end`.
        func tokenStart(before end: Int) -> Int? {
            var last = min(end, source.count) - 1
            while last >= 0, isSpace(source[last]) { last -= 1 }
            guard last >= 0 else { return nil }
            var first = last
            let byte = source[last]
            if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                if let opening = source[..<last].lastIndex(of: byte) { first = opening }
            } else if isWordByte(byte) {
                while first > 0, isWordByte(source[first - 1]) { first -= 1 }
            }
            return first
        }
        guard var first = tokenStart(before: end) else {
            return .syntax(message: parsed.message, line: parsed.line ?? 1, column: nil)
        }
        // Duktape's generic "parse error" comes one token late: it is raised on the token after
        // the one that cannot continue the program.
        if !parsed.endOfInput, parsed.message == "SyntaxError: parse error", let previous = tokenStart(before: first) {
            first = previous
        }
        let lineStart = source[..<first].lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0
        let line = source[..<first].reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
        let column = String(decoding: source[lineStart..<first], as: UTF8.self).count + 1
        return .syntax(message: parsed.message, line: line, column: column)
    }

    /// `SyntaxError: parse error (line 4, end of input)` → (`SyntaxError: parse error`, 4, true).
    static func splitPosition(_ message: String) -> (message: String, line: Int?, endOfInput: Bool) {
        guard let open = message.range(of: " (line ", options: .backwards), message.hasSuffix(")") else {
            return (message, nil, false)
        }
        let inner = message[open.upperBound..<message.index(before: message.endIndex)]
        let parts = inner.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard let first = parts.first, let line = Int(first) else { return (message, nil, false) }
        return (String(message[..<open.lowerBound]), line, parts.dropFirst().contains("end of input"))
    }

    private func exception(at index: duk_idx_t) -> PACError {
        let ctx = self.context
        var line: Int?
        if duk_get_type(ctx, index) == DUK_TYPE_OBJECT {
            duk_get_prop_string(ctx, index, "lineNumber")
            if duk_get_type(ctx, -1) == DUK_TYPE_NUMBER {
                let value = Int(duk_get_number(ctx, -1))
                if value > 0 { line = value }
            }
            duk_pop(ctx)
        }
        return .exception(message: Self.value(ctx, index).string, line: line)
    }

    // MARK: - Values

    static func value(_ ctx: OpaquePointer, _ index: duk_idx_t) -> PACValue {
        switch UInt32(duk_get_type(ctx, index)) {
        case DUK_TYPE_UNDEFINED, DUK_TYPE_NONE: return .undefined
        case DUK_TYPE_NULL: return .null
        case DUK_TYPE_BOOLEAN: return .bool(duk_get_boolean(ctx, index) != 0)
        case DUK_TYPE_NUMBER: return .number(duk_get_number(ctx, index))
        case DUK_TYPE_STRING:
            var length: duk_size_t = 0
            guard let pointer = duk_get_lstring(ctx, index, &length) else { return .string("") }
            return .string(Self.decode(pointer, length))
        default:
            var length: duk_size_t = 0
            guard let pointer = portcullis_duk_safe_to_lstring(ctx, index, &length) else { return .other("") }
            return .other(Self.decode(pointer, length))
        }
    }

    private static func decode(_ pointer: UnsafePointer<CChar>, _ length: duk_size_t) -> String {
        UnsafeRawBufferPointer(start: pointer, count: Int(length)).withMemoryRebound(to: UInt8.self) {
            String(decoding: $0, as: UTF8.self)
        }
    }

    static func push(_ ctx: OpaquePointer, _ value: PACValue) {
        switch value {
        case .undefined: duk_push_undefined(ctx)
        case .null: duk_push_null(ctx)
        case .bool(let flag): duk_push_boolean(ctx, flag ? 1 : 0)
        case .number(let number): duk_push_number(ctx, number)
        case .string(let string), .other(let string):
            string.utf8CString.withUnsafeBufferPointer { buffer in
                _ = duk_push_lstring(ctx, buffer.baseAddress, duk_size_t(buffer.count - 1))
            }
        }
    }

    private static func typeName(_ ctx: OpaquePointer, _ index: duk_idx_t) -> String {
        switch UInt32(duk_get_type(ctx, index)) {
        case DUK_TYPE_UNDEFINED, DUK_TYPE_NONE: return "undefined"
        case DUK_TYPE_NULL: return "null"
        case DUK_TYPE_BOOLEAN: return "a boolean"
        case DUK_TYPE_NUMBER: return "a number"
        default: return duk_is_function(ctx, index) != 0 ? "a function" : "an object"
        }
    }
}

/// What the C callbacks reach through the heap's user data: the memory account, the helpers'
/// world and the current evaluation's trace.
final class PACEngineState {
    let environment: PACEnvironment
    let resolver: PACResolver
    let memoryLimit: Int
    var memoryUsed = 0
    var memoryRefused = false
    var tracing = false
    var calls: [PACCall] = []
    var untracedCalls = 0
    var alerts: [String] = []
    private var alertBytes = 0

    init(environment: PACEnvironment, memoryLimit: Int) {
        self.environment = environment
        self.resolver = PACResolver(environment: environment)
        self.memoryLimit = memoryLimit
    }

    func startEvaluation(tracing: Bool) {
        self.tracing = tracing
        self.calls = []
        self.untracedCalls = 0
        self.alerts = []
        self.alertBytes = 0
        self.memoryRefused = false
        self.resolver.startEvaluation()
    }

    func limitError() -> PACError? { self.memoryRefused ? .memoryLimit(bytes: self.memoryLimit) : nil }

    func record(_ helper: String, _ arguments: [PACValue], _ answer: PACValue) {
        guard self.tracing else { return }
        guard self.calls.count < PACScript.maximumTracedCalls else {
            self.untracedCalls += 1
            return
        }
        self.calls.append(PACCall(helper: helper, arguments: arguments.map(\.literal), answer: answer.literal))
    }

    func alert(_ message: String) {
        guard self.alerts.count < 100, self.alertBytes < 64 * 1024 else { return }
        let text = String(message.prefix(1000))
        self.alertBytes += text.utf8.count
        self.alerts.append(text)
    }

    // Memory accounting: each block carries its size in a 16-byte header.
    static let header = 16

    func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
        guard size > 0 else { return nil }
        guard self.memoryUsed + size <= self.memoryLimit else {
            self.memoryRefused = true
            return nil
        }
        guard let base = Glibc.malloc(size + Self.header) else { return nil }
        base.storeBytes(of: size, as: Int.self)
        self.memoryUsed += size
        return base + Self.header
    }

    func reallocate(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let pointer else { return self.allocate(size) }
        let base = pointer - Self.header
        let old = base.load(as: Int.self)
        if size == 0 {
            self.memoryUsed -= old
            Glibc.free(base)
            return nil
        }
        guard self.memoryUsed - old + size <= self.memoryLimit else {
            self.memoryRefused = true
            return nil
        }
        guard let moved = Glibc.realloc(base, size + Self.header) else { return nil }
        moved.storeBytes(of: size, as: Int.self)
        self.memoryUsed += size - old
        return moved + Self.header
    }

    func free(_ pointer: UnsafeMutableRawPointer?) {
        guard let pointer else { return }
        let base = pointer - Self.header
        self.memoryUsed -= base.load(as: Int.self)
        Glibc.free(base)
    }
}

private func engineState(_ udata: UnsafeMutableRawPointer?) -> PACEngineState {
    Unmanaged<PACEngineState>.fromOpaque(udata!).takeUnretainedValue()
}

private let pacAllocate: duk_alloc_function = { udata, size in engineState(udata).allocate(Int(size)) }
private let pacReallocate: duk_realloc_function = { udata, pointer, size in
    engineState(udata).reallocate(pointer, Int(size))
}
private let pacFree: duk_free_function = { udata, pointer in engineState(udata).free(pointer) }

/// Duktape's last resort (an error with no catcher, or an internal failure): the process
/// cannot go on. The evaluator reports the exit status.
private let pacFatal: duk_fatal_function = { _, message in
    let text = "PAC engine fatal error: \(message.map { String(cString: $0) } ?? "unknown")\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
    _exit(PACScriptExit.fatal)
}

enum PACScriptExit {
    static let fatal: Int32 = 70
}

/// Every helper written in Swift goes through here; the function's magic number says which.
private let pacNativeTrampoline: duk_c_function = { ctx in
    guard let ctx else { return 0 }
    var functions = duk_memory_functions()
    duk_get_memory_functions(ctx, &functions)
    let state = engineState(functions.udata)
    guard let native = PACNative(rawValue: Int(duk_get_current_magic(ctx))) else { return 0 }
    let count = duk_get_top(ctx)
    var arguments: [PACValue] = []
    arguments.reserveCapacity(Int(count))
    for index in 0..<count { arguments.append(PACScript.value(ctx, index)) }
    let answer = native.call(arguments, state: state)
    PACScript.push(ctx, answer)
    return 1
}
