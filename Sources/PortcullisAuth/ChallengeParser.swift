/// One challenge of a `Proxy-Authenticate` / `WWW-Authenticate` field (RFC 9110 §11.3).
public struct Challenge: Sendable, Hashable {
    /// The scheme as sent; compare case-insensitively.
    public var scheme: String
    /// The token68 form (`NTLM TlRMTVNTUAAB…`, `Negotiate …`), if the challenge used it.
    public var token68: String?
    /// auth-params in order, names as sent, quoted-string values unescaped.
    public var parameters: [Parameter]

    public struct Parameter: Sendable, Hashable {
        public var name: String
        public var value: String
        /// Whether the value was a quoted-string (RFC 7616 requires some to be).
        public var wasQuoted: Bool
    }

    public init(scheme: String, token68: String? = nil, parameters: [Parameter] = []) {
        self.scheme = scheme
        self.token68 = token68
        self.parameters = parameters
    }

    /// The value of the first parameter called `name` (case-insensitive).
    public func parameter(_ name: String) -> String? {
        self.parameters.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    public func schemeIs(_ name: String) -> Bool {
        self.scheme.lowercased() == name.lowercased()
    }
}

/// Parses challenges with the full grammar of RFC 9110 §11: several challenges in one field and
/// across fields, commas that separate both challenges and parameters, quoted-strings (with
/// commas and escapes inside), token68, bad whitespace around `=`, and empty list elements.
public enum ChallengeParser {
    public struct ParseError: Error, Hashable, CustomStringConvertible {
        public var message: String
        public var description: String { self.message }
    }

    /// Parses every field value in order; the result lists the challenges in the order offered.
    public static func parse(fieldValues: [String]) throws -> [Challenge] {
        var challenges: [Challenge] = []
        for value in fieldValues {
            challenges += try self.parse(fieldValue: value)
        }
        return challenges
    }

    public static func parse(fieldValue: String) throws -> [Challenge] {
        var scanner = Scanner(Array(fieldValue.utf8))
        var challenges: [Challenge] = []
        while true {
            scanner.skipWhitespace()
            if scanner.atEnd { break }
            if scanner.peek == UInt8(ascii: ",") {
                // #rule: empty list elements are allowed and ignored.
                scanner.advance()
                continue
            }
            let token = try scanner.token()
            let afterToken = scanner.position
            scanner.skipWhitespace()
            if scanner.peek == UInt8(ascii: "=") && !scanner.isToken68Padding(from: afterToken) {
                // `name = value`: a parameter of the current challenge.
                guard !challenges.isEmpty else {
                    throw ParseError(message: "parameter '\(token)' before any authentication scheme")
                }
                scanner.advance()
                scanner.skipWhitespace()
                let (value, quoted) = try scanner.tokenOrQuotedString()
                challenges[challenges.count - 1].parameters.append(.init(name: token, value: value, wasQuoted: quoted))
            } else {
                // A new challenge: the scheme, then a token68, a first parameter, or nothing.
                var challenge = Challenge(scheme: token)
                scanner.position = afterToken
                let hadSpace = scanner.skipSpaces()
                if hadSpace, !scanner.atEnd, scanner.peek != UInt8(ascii: ",") {
                    let start = scanner.position
                    let name = try scanner.token68OrToken()
                    let afterName = scanner.position
                    scanner.skipWhitespace()
                    if scanner.peek == UInt8(ascii: "="), !scanner.isToken68Padding(from: afterName),
                        name.allSatisfy({ HTTPGrammar.isTokenCharacter($0) })
                    {
                        scanner.advance()
                        scanner.skipWhitespace()
                        let (value, quoted) = try scanner.tokenOrQuotedString()
                        challenge.parameters.append(.init(name: name, value: value, wasQuoted: quoted))
                    } else {
                        scanner.position = start
                        challenge.token68 = try scanner.token68()
                    }
                }
                challenges.append(challenge)
            }
            scanner.skipWhitespace()
            if scanner.atEnd { break }
            guard scanner.peek == UInt8(ascii: ",") else {
                throw ParseError(message: "expected ',' at offset \(scanner.position)")
            }
            scanner.advance()
        }
        return challenges
    }

    private struct Scanner {
        let bytes: [UInt8]
        var position = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { self.position >= self.bytes.count }
        var peek: UInt8? { self.atEnd ? nil : self.bytes[self.position] }
        mutating func advance() { self.position += 1 }

        mutating func skipWhitespace() {
            while let c = self.peek, c == 0x20 || c == 0x09 { self.advance() }
        }

        /// Skips spaces; tells whether there was at least one.
        mutating func skipSpaces() -> Bool {
            let start = self.position
            self.skipWhitespace()
            return self.position > start
        }

        mutating func token() throws -> String {
            let start = self.position
            while let c = self.peek, HTTPGrammar.isTokenByte(c) { self.advance() }
            guard self.position > start else {
                throw ParseError(message: "expected a token at offset \(start)")
            }
            return String(decoding: self.bytes[start..<self.position], as: UTF8.self)
        }

        /// The longest run of token68 characters (a superset of what a parameter name may use).
        mutating func token68OrToken() throws -> String {
            let start = self.position
            while let c = self.peek, HTTPGrammar.isTokenByte(c) || c == UInt8(ascii: "/") { self.advance() }
            guard self.position > start else {
                throw ParseError(message: "expected a token at offset \(start)")
            }
            return String(decoding: self.bytes[start..<self.position], as: UTF8.self)
        }

        mutating func token68() throws -> String {
            let start = self.position
            while let c = self.peek, c != UInt8(ascii: ","), c != 0x20, c != 0x09 { self.advance() }
            let text = self.bytes[start..<self.position]
            guard HTTPGrammar.isToken68(Substring(String(decoding: text, as: UTF8.self))) else {
                throw ParseError(message: "invalid token68 at offset \(start)")
            }
            return String(decoding: text, as: UTF8.self)
        }

        /// `=` that is padding of a token68 (`abc==` then end, ',' or space) rather than a
        /// parameter's `=` (which a value must follow).
        func isToken68Padding(from index: Int) -> Bool {
            var i = index
            guard i < self.bytes.count, self.bytes[i] == UInt8(ascii: "=") else { return false }
            while i < self.bytes.count, self.bytes[i] == UInt8(ascii: "=") { i += 1 }
            var j = i
            while j < self.bytes.count, self.bytes[j] == 0x20 || self.bytes[j] == 0x09 { j += 1 }
            if j >= self.bytes.count || self.bytes[j] == UInt8(ascii: ",") {
                // `name=` with nothing after: only padding can end like that, unless it is `name==`
                // (never a parameter either). Either way it is not a parameter.
                return true
            }
            return false
        }

        mutating func tokenOrQuotedString() throws -> (String, Bool) {
            if self.peek == UInt8(ascii: "\"") {
                self.advance()
                var out: [UInt8] = []
                while true {
                    guard let c = self.peek else { throw ParseError(message: "unterminated quoted-string") }
                    self.advance()
                    if c == UInt8(ascii: "\"") { break }
                    if c == UInt8(ascii: "\\") {
                        guard let escaped = self.peek else { throw ParseError(message: "unterminated quoted-string") }
                        self.advance()
                        out.append(escaped)
                        continue
                    }
                    if (c < 0x20 && c != 0x09) || c == 0x7F {
                        throw ParseError(message: "control character in a quoted-string")
                    }
                    out.append(c)
                }
                return (String(decoding: out, as: UTF8.self), true)
            }
            return (try self.token(), false)
        }
    }
}
