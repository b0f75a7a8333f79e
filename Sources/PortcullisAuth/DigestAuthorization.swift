/// A Digest `Proxy-Authorization` (RFC 7616 §3.4), parsed and checked for shape only: no
/// secret is involved yet.
///
/// Parsed over the field's bytes and kept as one array: each value is a span of it, with
/// quoted-string escapes and `username*` percent-encoding undone in place. Checking an answer
/// therefore builds no String: building a dozen of them per request (and the general challenge
/// grammar under them) was a third of a Digest request's CPU time. The String properties are
/// for tests, logs and errors.
public struct DigestAuthorization: Sendable, Hashable {
    struct Span: Sendable, Hashable {
        var start: Int
        var end: Int
        var count: Int { self.end - self.start }
    }

    let bytes: [UInt8]
    /// Where each value is in ``bytes``, and the values already decoded.
    let spans: Spans

    /// Whether ``username`` is the client's hash of the name and realm (RFC 7616 §3.4.4).
    public var userhash: Bool { self.spans.userhash }
    public var algorithm: DigestAlgorithm { self.spans.algorithm }
    public var nonceCount: UInt32 { self.spans.nonceCount }

    /// The user name as sent: the name itself, or its hex hash when ``userhash`` is set.
    public var username: String { self.string(self.spans.username) }
    public var realm: String { self.string(self.spans.realm) }
    public var nonce: String { self.string(self.spans.nonce) }
    public var uri: String { self.string(self.spans.uri) }
    /// Lower-case hex.
    public var response: String { self.string(self.spans.response) }
    public var cnonce: String { self.string(self.spans.cnonce) }
    /// `nc` as sent (8 hex digits, lower-cased).
    public var nonceCountText: String { self.string(self.spans.nc) }
    public var opaque: String? { self.spans.opaque.map { self.string($0) } }

    /// The user name's bytes as sent (see ``username``).
    public var usernameBytes: [UInt8] { self.array(self.spans.username) }

    /// Whether the user name as sent is `name` (not constant-time: for a per-connection memo).
    public func usernameIs(_ name: [UInt8]) -> Bool { self.equals(self.spans.username, name) }

    /// Whether the answer is for `realm`.
    public func realmIs(_ realm: [UInt8]) -> Bool { self.equals(self.spans.realm, realm) }

    /// Whether the answer carries no opaque, or `opaque`.
    public func opaqueIsAbsentOr(_ opaque: [UInt8]) -> Bool {
        self.spans.opaque.map { self.equals($0, opaque) } ?? true
    }

    /// Longest parameter value accepted: a nonce, a URI or a name longer than this is not from
    /// a real client, and hashing it would only cost time.
    public static let maximumValueLength = 4096

    func string(_ span: Span) -> String {
        String(decoding: self.bytes[span.start..<span.end], as: UTF8.self)
    }

    func array(_ span: Span) -> [UInt8] {
        Array(self.bytes[span.start..<span.end])
    }

    func withBytes<R>(_ span: Span, _ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        try self.bytes.withUnsafeBufferPointer { all in
            try body(UnsafeBufferPointer(rebasing: all[span.start..<span.end]))
        }
    }

    /// Whether a span holds exactly `other`'s bytes (not constant-time: for public values).
    func equals(_ span: Span, _ other: UnsafeBufferPointer<UInt8>) -> Bool {
        guard span.count == other.count else { return false }
        return self.withBytes(span) { mine in mine.elementsEqual(other) }
    }

    func equals(_ span: Span, _ other: [UInt8]) -> Bool {
        other.withUnsafeBufferPointer { self.equals(span, $0) }
    }

    // MARK: Parsing

    /// Parses one field value whose scheme is Digest.
    public static func parse(_ fieldValue: String) -> Result<DigestAuthorization, AuthFailure> {
        self.parse(bytes: Array(fieldValue.utf8))
    }

    /// Parses one field value whose scheme is Digest, given as its bytes.
    /// The array becomes the answer's storage (consumed: not copied again).
    public static func parse(bytes: consuming [UInt8]) -> Result<DigestAuthorization, AuthFailure> {
        var storage = consume bytes
        let outcome = storage.withUnsafeMutableBufferPointer { buffer -> Result<Spans, AuthFailure> in
            withUnsafeTemporaryAllocation(of: Span?.self, capacity: Field.count) { spans in
                spans.initialize(repeating: nil)
                var cursor = Cursor(buffer: buffer, spans: spans)
                return cursor.parse()
            }
        }
        switch outcome {
        case .failure(let failure):
            return .failure(failure)
        case .success(let spans):
            return .success(DigestAuthorization(bytes: storage, spans: spans))
        }
    }

    struct Spans: Sendable, Hashable {
        var username: Span
        var realm: Span
        var nonce: Span
        var uri: Span
        var response: Span
        var cnonce: Span
        var nc: Span
        var opaque: Span?
        var userhash: Bool
        var algorithm: DigestAlgorithm
        var nonceCount: UInt32
    }

    /// The parameters of a Digest answer, by position.
    private enum Field: Int, CaseIterable {
        case username, usernameExtended, realm, nonce, uri, response, algorithm, cnonce, nc, qop, opaque, userhash

        var name: String {
            switch self {
            case .usernameExtended: return "username*"
            default: return "\(self)"
            }
        }

        static let count = Self.allCases.count

        /// Case-insensitive (RFC 9110 §11.2: parameter names are). By length and first letter,
        /// then one comparison: this runs a dozen times per request.
        static func find(_ cursor: Cursor, _ name: Span) -> Field? {
            let candidate: (Field, StaticString)
            switch (name.count, HTTPGrammar.asciiLower(cursor.buffer[name.start])) {
            case (2, UInt8(ascii: "n")): candidate = (.nc, "nc")
            case (3, UInt8(ascii: "u")): candidate = (.uri, "uri")
            case (3, UInt8(ascii: "q")): candidate = (.qop, "qop")
            case (5, UInt8(ascii: "r")): candidate = (.realm, "realm")
            case (5, UInt8(ascii: "n")): candidate = (.nonce, "nonce")
            case (6, UInt8(ascii: "c")): candidate = (.cnonce, "cnonce")
            case (6, UInt8(ascii: "o")): candidate = (.opaque, "opaque")
            case (8, UInt8(ascii: "r")): candidate = (.response, "response")
            case (8, UInt8(ascii: "u")):
                candidate =
                    HTTPGrammar.asciiLower(cursor.buffer[name.start + 4]) == UInt8(ascii: "n")
                    ? (.username, "username") : (.userhash, "userhash")
            case (9, UInt8(ascii: "u")): candidate = (.usernameExtended, "username*")
            case (9, UInt8(ascii: "a")): candidate = (.algorithm, "algorithm")
            default: return nil
            }
            return cursor.equalsIgnoringCase(name, candidate.1) ? candidate.0 : nil
        }
    }

    /// A scanner over the field's bytes that also rewrites them (unescaping) in place.
    private struct Cursor {
        let buffer: UnsafeMutableBufferPointer<UInt8>
        var i = 0
        /// By ``Field`` raw value.
        let spans: UnsafeMutableBufferPointer<Span?>

        init(buffer: UnsafeMutableBufferPointer<UInt8>, spans: UnsafeMutableBufferPointer<Span?>) {
            self.buffer = buffer
            self.spans = spans
        }

        var atEnd: Bool { self.i >= self.buffer.count }

        mutating func skipWhitespace() {
            while self.i < self.buffer.count, self.buffer[self.i] == 0x20 || self.buffer[self.i] == 0x09 { self.i += 1 }
        }

        mutating func token() -> Span? {
            let start = self.i
            while self.i < self.buffer.count, HTTPGrammar.isTokenByte(self.buffer[self.i]) { self.i += 1 }
            return self.i > start ? Span(start: start, end: self.i) : nil
        }

        /// A quoted-string starting at `i` (the opening quote), unescaped in place.
        mutating func quotedString() -> Span? {
            self.i += 1
            let start = self.i
            var write = start
            while self.i < self.buffer.count {
                var c = self.buffer[self.i]
                self.i += 1
                if c == UInt8(ascii: "\"") { return Span(start: start, end: write) }
                if c == UInt8(ascii: "\\") {
                    guard self.i < self.buffer.count else { return nil }
                    c = self.buffer[self.i]
                    self.i += 1
                } else if (c < 0x20 && c != 0x09) || c == 0x7F {
                    return nil
                }
                self.buffer[write] = c
                write += 1
            }
            return nil
        }

        func bytes(_ span: Span) -> UnsafeMutableBufferPointer<UInt8>.SubSequence {
            self.buffer[span.start..<span.end]
        }

        func equalsIgnoringCase(_ span: Span, _ text: StaticString) -> Bool {
            guard span.count == text.utf8CodeUnitCount else { return false }
            let expected = UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount)
            return zip(expected, self.bytes(span)).allSatisfy { $0 == HTTPGrammar.asciiLower($1) }
        }

        func safeName(_ span: Span) -> String {
            let bytes = self.bytes(span)
            return bytes.count <= 32 && bytes.allSatisfy(HTTPGrammar.isTokenByte)
                ? String(decoding: bytes, as: UTF8.self) : "(unprintable)"
        }

        mutating func parse() -> Result<Spans, AuthFailure> {
            func malformed(_ why: String) -> Result<Spans, AuthFailure> {
                .failure(
                    AuthFailure(
                        reason: .malformedCredentials,
                        explanation: "the Digest credentials are malformed: \(why)",
                        presentedScheme: AuthScheme.digest.rawValue
                    )
                )
            }
            self.skipWhitespace()
            guard let scheme = self.token(), self.equalsIgnoringCase(scheme, "digest") else {
                return malformed("expected the Digest scheme")
            }
            let afterScheme = self.i
            self.skipWhitespace()
            guard self.i > afterScheme, !self.atEnd else {
                return malformed("expected one Digest credential made of name=value parameters")
            }
            var unknown: [[UInt8]] = []
            while true {
                self.skipWhitespace()
                if self.atEnd { break }
                if self.buffer[self.i] == UInt8(ascii: ",") {
                    // #rule: empty list elements are allowed and ignored.
                    self.i += 1
                    continue
                }
                guard let name = self.token() else {
                    return malformed("expected a parameter name at offset \(self.i)")
                }
                self.skipWhitespace()
                guard !self.atEnd, self.buffer[self.i] == UInt8(ascii: "=") else {
                    return malformed("expected one Digest credential made of name=value parameters")
                }
                self.i += 1
                self.skipWhitespace()
                let value: Span
                if !self.atEnd, self.buffer[self.i] == UInt8(ascii: "\"") {
                    guard let quoted = self.quotedString() else {
                        return malformed("unterminated quoted-string or control character in it")
                    }
                    value = quoted
                } else {
                    guard let token = self.token() else {
                        return malformed("the parameter \(self.safeName(name)) has no value")
                    }
                    value = token
                }
                guard value.count <= DigestAuthorization.maximumValueLength else {
                    return malformed("the parameter \(self.safeName(name)) is too long")
                }
                if let field = Field.find(self, name) {
                    guard self.spans[field.rawValue] == nil else {
                        return malformed("the parameter \(field.name) appears twice")
                    }
                    self.spans[field.rawValue] = value
                } else {
                    // Unknown parameters are ignored (RFC 7616 §3.4), but not twice.
                    let lowered = self.bytes(name).map(HTTPGrammar.asciiLower)
                    guard !unknown.contains(lowered) else {
                        return malformed("the parameter \(self.safeName(name)) appears twice")
                    }
                    unknown.append(lowered)
                }
                self.skipWhitespace()
                if self.atEnd { break }
                guard self.buffer[self.i] == UInt8(ascii: ",") else {
                    return malformed("expected ',' at offset \(self.i)")
                }
                self.i += 1
            }
            return self.check(malformed)
        }

        /// What RFC 7616 requires of the parameters, with qop=auth the only one offered.
        mutating func check(_ malformed: (String) -> Result<Spans, AuthFailure>) -> Result<Spans, AuthFailure> {
            func field(_ f: Field) -> Span? { self.spans[f.rawValue] }
            let userhash: Bool
            switch field(.userhash) {
            case nil: userhash = false
            case let span? where self.equalsIgnoringCase(span, "false"): userhash = false
            case let span? where self.equalsIgnoringCase(span, "true"): userhash = true
            default: return malformed("userhash must be true or false")
            }
            let username: Span
            switch (field(.username), field(.usernameExtended)) {
            case (let plain?, nil):
                username = plain
            case (nil, let extended?):
                guard !userhash else { return malformed("username* cannot be used with userhash=true") }
                guard let decoded = self.decodeExtValue(extended) else {
                    return malformed("username* is not a UTF-8 extended value (UTF-8''name)")
                }
                username = decoded
            case (.some, .some):
                return malformed("both username and username* were sent")
            case (nil, nil):
                return malformed("the username parameter is missing")
            }
            // One by one: an array literal here was an allocation on every request.
            guard field(.realm) != nil else { return malformed("the realm parameter is missing") }
            guard field(.nonce) != nil else { return malformed("the nonce parameter is missing") }
            guard field(.uri) != nil else { return malformed("the uri parameter is missing") }
            guard field(.response) != nil else { return malformed("the response parameter is missing") }
            let algorithm: DigestAlgorithm
            if let token = field(.algorithm) {
                guard let known = DigestAlgorithm(tokenBytes: UnsafeBufferPointer(rebasing: self.bytes(token))) else {
                    return malformed("the algorithm \(self.safeName(token)) is unknown")
                }
                algorithm = known
            } else {
                algorithm = DigestAlgorithm(hash: .md5)
            }
            guard let qop = field(.qop) else {
                // RFC 2069 answers (no qop, nc, cnonce) have no replay protection: never offered here.
                return malformed("qop=auth is required (this proxy offers qop=\"auth\")")
            }
            guard self.equalsIgnoringCase(qop, "auth") else {
                return .failure(
                    AuthFailure(
                        reason: .malformedCredentials,
                        explanation: "qop=\(self.safeName(qop)) is not offered here; answer with qop=auth",
                        presentedScheme: AuthScheme.digest.rawValue
                    )
                )
            }
            guard let cnonce = field(.cnonce), cnonce.count > 0 else {
                return malformed("the cnonce parameter is missing")
            }
            guard let nc = field(.nc) else { return malformed("the nc parameter is missing") }
            var count: UInt32 = 0
            var isHex = nc.count == 8
            for index in nc.start..<nc.end where isHex {
                guard let digit = HTTPGrammar.hexValue(self.buffer[index]) else {
                    isHex = false
                    break
                }
                self.buffer[index] = HTTPGrammar.asciiLower(self.buffer[index])
                count = count << 4 | UInt32(digit)
            }
            guard isHex, count > 0 else { return malformed("nc must be 8 hex digits, from 00000001") }
            let response = field(.response)!
            for index in response.start..<response.end {
                self.buffer[index] = HTTPGrammar.asciiLower(self.buffer[index])
            }
            guard response.count == algorithm.hexLength, self.bytes(response).allSatisfy(HTTPGrammar.isHexDigit) else {
                return malformed("response is not a \(algorithm) hash in hex")
            }
            return .success(
                Spans(
                    username: username,
                    realm: field(.realm)!,
                    nonce: field(.nonce)!,
                    uri: field(.uri)!,
                    response: response,
                    cnonce: cnonce,
                    nc: nc,
                    opaque: field(.opaque),
                    userhash: userhash,
                    algorithm: algorithm,
                    nonceCount: count
                )
            )
        }

        /// RFC 8187 `ext-value` with the UTF-8 charset: `UTF-8'[language]'percent-encoded`,
        /// decoded in place; `nil` unless it is that and valid UTF-8.
        mutating func decodeExtValue(_ span: Span) -> Span? {
            let prefix = Span(start: span.start, end: min(span.end, span.start + 6))
            guard self.equalsIgnoringCase(prefix, "utf-8'") else { return nil }
            guard let languageEnd = self.bytes(Span(start: prefix.end, end: span.end)).firstIndex(of: UInt8(ascii: "'"))
            else { return nil }
            var read = languageEnd + 1
            var write = span.start
            while read < span.end {
                var c = self.buffer[read]
                read += 1
                if c == UInt8(ascii: "%") {
                    guard read + 1 < span.end,
                        let high = HTTPGrammar.hexValue(self.buffer[read]),
                        let low = HTTPGrammar.hexValue(self.buffer[read + 1])
                    else { return nil }
                    c = high << 4 | low
                    read += 2
                }
                self.buffer[write] = c
                write += 1
            }
            let decoded = Span(start: span.start, end: write)
            guard String(validating: self.bytes(decoded), as: UTF8.self) != nil else { return nil }
            return decoded
        }
    }
}

extension DigestAlgorithm {
    private static let tokens: [([UInt8], DigestAlgorithm)] = Hash.allCases.flatMap { hash in
        [false, true].map { session in
            let algorithm = DigestAlgorithm(hash: hash, session: session)
            return (Array(algorithm.description.lowercased().utf8), algorithm)
        }
    }

    /// ``init(token:)`` over bytes, case-insensitive.
    init?(tokenBytes: UnsafeBufferPointer<UInt8>) {
        for (name, algorithm) in Self.tokens where name.count == tokenBytes.count {
            if zip(name, tokenBytes).allSatisfy({ $0 == HTTPGrammar.asciiLower($1) }) {
                self = algorithm
                return
            }
        }
        return nil
    }
}
