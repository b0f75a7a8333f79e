import Foundation

/// What a PAC's helpers see of the world: the machine's addresses, name resolution and the
/// clock. Every part can be fixed (`--my-ip`, `--resolve`, `--no-dns`, `--now`) so results are
/// reproducible.
public struct PACEnvironment: Codable, Sendable, Equatable {
    /// `myIpAddress()` is the first IPv4 address here, `myIpAddressEx()` all of them. Empty: the
    /// address of the interface the default route leaves by.
    public var myAddresses: [String]
    /// Names answered without DNS (`--resolve HOST=IP[,IP]`); an empty list makes a name
    /// unresolvable. Keys are lowercased.
    public var hosts: [String: [String]]
    /// Whether names not in `hosts` are looked up in DNS (`--no-dns` turns it off).
    public var useDNS: Bool
    /// The instant the date helpers and `Date` see, in seconds since 1970; nil: the real clock.
    public var now: Double?
    /// The local time zone's offset from UTC in seconds; nil: the system's zone.
    public var utcOffset: Int?
    /// How long one DNS lookup may take, and all of one evaluation's together.
    public var dnsTimeout: Double
    public var dnsBudget: Double

    public init(
        myAddresses: [String] = [],
        hosts: [String: [String]] = [:],
        useDNS: Bool = true,
        now: Double? = nil,
        utcOffset: Int? = nil,
        dnsTimeout: Double = 2,
        dnsBudget: Double = 4
    ) {
        self.myAddresses = myAddresses
        self.hosts = Dictionary(hosts.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { $1 })
        self.useDNS = useDNS
        self.now = now
        self.utcOffset = utcOffset
        self.dnsTimeout = dnsTimeout
        self.dnsBudget = dnsBudget
    }

    /// Parses `--now`: an ISO 8601 instant whose offset also becomes the local time zone
    /// (`2026-03-15T10:30:45+01:00`: local 10:30:45, GMT 09:30:45; `Z` makes local time GMT).
    public static func parseNow(_ text: String) -> (instant: Double, utcOffset: Int)? {
        let bytes = Array(text.utf8)
        func number(_ range: Range<Int>) -> Int? {
            guard range.upperBound <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[range] {
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            return value
        }
        guard bytes.count >= 20, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"),
            bytes[10] == UInt8(ascii: "T") || bytes[10] == UInt8(ascii: " "), bytes[13] == UInt8(ascii: ":"),
            bytes[16] == UInt8(ascii: ":"),
            let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
            let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 60
        else { return nil }
        var index = 19
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 { index += 1 }
        }
        let offset: Int
        if index == bytes.count - 1, bytes[index] | 0x20 == UInt8(ascii: "z") {
            offset = 0
        } else if index + 6 == bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-"),
            bytes[index + 3] == UInt8(ascii: ":"), let hours = number(index + 1..<index + 3),
            let minutes = number(index + 4..<index + 6), hours < 24, minutes < 60
        {
            offset = (bytes[index] == UInt8(ascii: "-") ? -1 : 1) * (hours * 3600 + minutes * 60)
        } else {
            return nil
        }
        guard let days = CivilDate.daysFromCivil(year: year, month: month, day: day),
            CivilDate.daysInMonth(year: year, month: month) >= day
        else { return nil }
        let local = Double(days * 86400 + hour * 3600 + minute * 60 + second)
        return (local - Double(offset), offset)
    }
}

/// Proleptic Gregorian calendar arithmetic, without Foundation's calendars (the same answers
/// on every machine and in every time zone).
enum CivilDate {
    static func isLeap(_ year: Int) -> Bool { (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 }

    static func daysInMonth(year: Int, month: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int? {
        guard (1...12).contains(month) else { return nil }
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146097 + doe - 719468
    }

    struct Fields: Equatable {
        var year: Int
        /// 0–11, as JavaScript's `getMonth()`.
        var month: Int
        var day: Int
        var hour: Int
        var minute: Int
        var second: Int
        /// 0 Sunday – 6 Saturday, as `getDay()`.
        var weekday: Int
    }

    /// The calendar fields of `seconds` since 1970 shifted by `offset`.
    static func fields(_ seconds: Double, offset: Int) -> Fields {
        let total = Int(floor(seconds)) + offset
        var days = total / 86400
        var rest = total % 86400
        if rest < 0 {
            rest += 86400
            days -= 1
        }
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        var weekday = (days + 4) % 7
        if weekday < 0 { weekday += 7 }
        return Fields(
            year: year,
            month: month - 1,
            day: day,
            hour: rest / 3600,
            minute: rest % 3600 / 60,
            second: rest % 60,
            weekday: weekday
        )
    }
}
