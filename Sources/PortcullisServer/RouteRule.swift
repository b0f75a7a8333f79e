import ArgumentParser

/// One routing rule as written: hosts and where their requests go, `direct` or a parent.
/// On the command line `PATTERNS=VIA` (`--routes '*.corp.example,10.0.0.0/8=direct'`); in a
/// file that string, or `{hosts: [...], via: ...}`.
public struct RouteRule: Codable, Sendable, Hashable, OptionValue {
    public var hosts: [String]
    /// `direct`, or a parent as `--parent` names it: `host:port`, or the host alone when only
    /// one parent has it.
    public var via: String

    public static let requirement = "PATTERNS=VIA: comma-separated host patterns, then direct or a parent's host[:port]"

    public init(hosts: [String], via: String) {
        self.hosts = hosts
        self.via = via
    }

    public init(argument: String) throws {
        guard let equals = argument.lastIndex(of: "=") else { throw SettingValueError(requirement: Self.requirement) }
        let hosts = CommaList(argument: String(argument[..<equals])).items
        let via = String(argument[argument.index(after: equals)...]).trimmingCharacters(in: .whitespaces)
        guard !hosts.isEmpty, !via.isEmpty else { throw SettingValueError(requirement: Self.requirement) }
        self.init(hosts: hosts, via: via)
    }

    private enum CodingKeys: String, CodingKey {
        case hosts, via
    }

    public init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self) {
            do {
                try self.init(argument: text)
            } catch {
                throw DecodingError.dataCorrupted(
                    .init(codingPath: decoder.codingPath, debugDescription: Self.requirement, underlyingError: error)
                )
            }
            return
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let hosts =
            (try? container.decode(CommaList.self, forKey: .hosts).items)
            ?? []
        let via = try container.decode(String.self, forKey: .via)
        guard !hosts.isEmpty else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "a route needs hosts: a list of patterns")
            )
        }
        self.init(hosts: hosts, via: via)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.hosts, forKey: .hosts)
        try container.encode(self.via, forKey: .via)
    }
}
