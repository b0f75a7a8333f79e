/// The helpers written in Swift: those that need the world (names, addresses) or parse
/// addresses. The string and date helpers, whose browser semantics are JavaScript's own
/// coercions, are written in JavaScript (`PACPrelude`).
enum PACNative: Int, CaseIterable {
    /// `__portcullis_record(name, answer, args…)`: the prelude's helpers report their calls.
    case record
    /// `__portcullis_resolve4(host)`: `dnsResolve` without a trace entry (for `isInNet`).
    case resolve4
    /// `__portcullis_isLiteral(text)`: whether Chromium reads `text` as an address literal
    /// (for `isPlainHostName`).
    case isLiteral
    case dnsResolve
    case dnsResolveEx
    case isResolvable
    case isResolvableEx
    case myIpAddress
    case myIpAddressEx
    case isInNetEx
    case sortIpAddressList
    case getClientVersion
    case alert

    var globalName: String {
        switch self {
        case .record: return "__portcullis_record"
        case .resolve4: return "__portcullis_resolve4"
        case .isLiteral: return "__portcullis_isLiteral"
        default: return "\(self)"
        }
    }

    func call(_ arguments: [PACValue], state: PACEngineState) -> PACValue {
        switch self {
        case .record:
            guard arguments.count >= 2, case .string(let name) = arguments[0] else { return .undefined }
            state.record(name, Array(arguments.dropFirst(2)), arguments[1])
            return .undefined
        case .resolve4:
            return Self.resolve4(arguments, state: state)
        case .isLiteral:
            guard case .string(let text)? = arguments.first else { return .bool(false) }
            return .bool(PACAddress(chromiumLiteral: text) != nil)
        default:
            let answer = self.helper(arguments, state: state)
            state.record(self.globalName, arguments, answer)
            return answer
        }
    }

    private func helper(_ arguments: [PACValue], state: PACEngineState) -> PACValue {
        let resolver = state.resolver
        switch self {
        case .record, .resolve4, .isLiteral:
            return .undefined
        case .dnsResolve:
            return Self.resolve4(arguments, state: state)
        case .isResolvable:
            return .bool(Self.resolve4(arguments, state: state) != .null)
        case .dnsResolveEx:
            // Chromium's binding returns nothing for a non-string argument.
            guard case .string(let host)? = arguments.first else { return .undefined }
            return .string(resolver.addresses(of: host).map(\.text).joined(separator: ";"))
        case .isResolvableEx:
            // `dnsResolveEx(host) != ""`, so a non-string is "resolvable" (undefined != "").
            guard case .string(let host)? = arguments.first else { return .bool(true) }
            return .bool(!resolver.addresses(of: host).isEmpty)
        case .myIpAddress:
            let addresses = resolver.myAddresses()
            let address = addresses.first(where: \.isIPv4) ?? addresses.first
            return .string(address?.text ?? "127.0.0.1")
        case .myIpAddressEx:
            return .string(resolver.myAddresses().map(\.text).joined(separator: ";"))
        case .isInNetEx:
            guard arguments.count >= 2, case .string(let ip) = arguments[0], case .string(let prefix) = arguments[1]
            else { return .null }
            guard ip.allSatisfy(\.isASCII), prefix.allSatisfy(\.isASCII), let address = PACAddress(chromiumLiteral: ip),
                let (network, length) = PACAddress.parsePrefix(prefix)
            else { return .bool(false) }
            return .bool(address.matches(prefix: network, length: length))
        case .sortIpAddressList:
            guard case .string(let list)? = arguments.first, list.allSatisfy(\.isASCII) else { return .null }
            let compact = list.filter { $0 != " " && $0 != "\t" }
            var items: [(text: String, address: PACAddress)] = []
            for item in compact.split(separator: ";") {
                guard let address = PACAddress(chromiumLiteral: String(item)) else { return .bool(false) }
                items.append((String(item), address))
            }
            guard !items.isEmpty else { return .bool(false) }
            // Stable: equal addresses keep their order. Each item keeps the text it came with.
            let sorted = items.enumerated().sorted { lhs, rhs in
                lhs.element.address != rhs.element.address
                    ? lhs.element.address < rhs.element.address : lhs.offset < rhs.offset
            }
            return .string(sorted.map(\.element.text).joined(separator: ";"))
        case .getClientVersion:
            return .string("1.0")
        case .alert:
            state.alert(arguments.first?.string ?? "undefined")
            return .undefined
        }
    }

    /// The first IPv4 address of the host argument, or null (what `dnsResolve` answers: IPv4
    /// only, and null for anything but a string).
    private static func resolve4(_ arguments: [PACValue], state: PACEngineState) -> PACValue {
        guard case .string(let host)? = arguments.first,
            let address = state.resolver.addresses(of: host).first(where: \.isIPv4)
        else { return .null }
        return .string(address.text)
    }
}
