import ArgumentParser

/// Every setting of `portcullis serve`, declared once: its option name (YAML keys are the same
/// long names), help with the default, value type and check. The command line parses it
/// (`serve` holds it as an option group), a config file decodes into it
/// (``DeclaredSettings/parse(yaml:source:)``), flags are layered over the file and a reload is
/// compared per setting from this declaration. A setting that is not given is `nil` (`listen`:
/// empty); ``ServerConfiguration`` applies the defaults and the checks that span settings.
///
/// Make values with `ServeOptions.parse([...])` or ``DeclaredSettings/unset()``, not `init()`,
/// whose properties are option definitions that have no value yet.
public struct ServeOptions: DeclaredSettings {
    public init() {}

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Address to listen on; repeatable. IPv6 as [::1]:PORT. (default: 127.0.0.1:3128)",
            valueName: "host:port"
        )
    )
    public var listen: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Address for clients that speak TLS to the proxy (an https:// proxy URL); repeatable, alongside or instead of --listen. Needs --tls-cert and --tls-key.",
            valueName: "host:port"
        )
    )
    public var listenTLS: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The TLS listeners' certificate: PEM, the proxy's own first, then its chain. Re-read when it changes and on SIGHUP.",
            valueName: "file"
        )
    )
    public var tlsCert: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The TLS listeners' private key: PEM, not encrypted, matching --tls-cert.",
            valueName: "file"
        )
    )
    public var tlsKey: String?

    @Flag(
        inversion: .prefixedNo,
        help: "Offer Basic only on TLS listeners: on plain ones a Basic answer gets a 407 naming the https:// address."
    )
    public var basicRequiresTLS: Bool?

    @Flag(
        inversion: .prefixedNo,
        help:
            "Offer HTTP/2 on the TLS listeners (ALPN h2, then http/1.1): each stream one request or CONNECT tunnel, authenticated on its own. (default: on)"
    )
    public var http2: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp("HTTP/2 streams a client may have open at once. (default: 100)", valueName: "n")
    )
    public var http2MaxStreams: Count?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Each HTTP/2 stream's receive window in bytes, at least 65535. (default: 1048576)",
            valueName: "bytes"
        )
    )
    public var http2StreamWindow: ByteCount?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "An HTTP/2 connection's receive window in bytes, shared by its streams. (default: 16777216)",
            valueName: "bytes"
        )
    )
    public var http2ConnectionWindow: ByteCount?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "CA certificates (PEM) that client certificates on the TLS listeners are verified against; with --auth certificate they name the user. Without another scheme in --auth, clients without a certificate are refused by the handshake.",
            valueName: "file"
        )
    )
    public var tlsClientCA: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Where a client certificate names its user: cn (the subject's common name), san-email or san-uri. (default: cn)",
            valueName: "field"
        )
    )
    public var certUserFrom: String?

    @Flag(
        inversion: .prefixedNo,
        help:
            "Accept a client certificate's user without a user of that name in the users store (no disable or expiry then)."
    )
    public var certUsersImplicit: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp("Apache htpasswd users file (bcrypt, apr1, SHA, SHA-crypt, DES).", valueName: "file")
    )
    public var htpasswd: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Apache htdigest users file (MD5 Digest, and Basic), for --realm.", valueName: "file")
    )
    public var htdigest: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "User database: sqlite:PATH or postgres://user:password@host:port/db (password also from PGPASSWORD). (default: <data dir>/portcullis.db, created on first run)",
            valueName: "url"
        )
    )
    public var store: String?

    @Option(name: .long, help: ArgumentHelp("Realm named in the challenge. (default: Portcullis)", valueName: "text"))
    public var realm: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Schemes offered, in challenge order: negotiate (Kerberos, needs --keytab), ntlm (users enrolled with --ntlm), digest, basic, bearer (tokens of portcullis tokens issue), certificate (client certificates on TLS listeners, needs --tls-client-ca); or none to turn authentication off (loopback listeners only, unless --allow-open-proxy). (default: basic)",
            valueName: "list"
        )
    )
    public var auth: CommaList?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Digest algorithms offered, in order: SHA-256, SHA-512-256, MD5 and their -sess variants. (default: SHA-256,MD5)",
            valueName: "list"
        )
    )
    public var digestAlgorithms: CommaList?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a Digest nonce stays valid; then clients get stale=true and renew it silently. (default: 600)",
            valueName: "seconds"
        )
    )
    public var digestNonceLifetime: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "File with the key that signs Digest nonces (>= 16 bytes), for instances that share no database. (default: kept in the user database, else random per process)",
            valueName: "file"
        )
    )
    public var digestSecretFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "one-field: every Digest challenge in one Proxy-Authenticate field, which curl and Python's urllib answer with MD5 and RFC clients with the first (SHA-256); per-algorithm: one field each, which curl answers with the first algorithm and urllib only when it is MD5. (default: one-field)",
            valueName: "layout"
        )
    )
    public var digestChallenges: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Keytab holding the proxy's HTTP/<host name> keys, for --auth negotiate. (default: $KRB5_KTNAME)",
            valueName: "file"
        )
    )
    public var keytab: String?

    @Flag(
        inversion: .prefixedNo,
        help:
            "Name Negotiate users alice rather than alice@EXAMPLE.ORG in logs and metrics (the local name krb5.conf maps the principal to; other realms' principals keep their full name). Policy rules may name either form."
    )
    public var stripRealm: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Negotiate/NTLM handshakes in progress at once across the proxy; more get 503. (default: 1024)",
            valueName: "n"
        )
    )
    public var maxPendingHandshakes: Count?

    @Flag(
        inversion: .prefixedNo,
        help: "Allow destinations in loopback, private and link-local ranges (checked on the resolved address)."
    )
    public var allowPrivateDestinations: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp("Ports CONNECT may reach, comma-separated. (default: 443)", valueName: "list")
    )
    public var connectPorts: PortList?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A parent proxy to forward everything through, http://[USER[:PASSWORD]@]HOST[:PORT] (percent-encoded; port 3128 by default); repeatable: the first one up is used, the next when it cannot be reached. Its 407 is answered with USER's credentials.",
            valueName: "url"
        )
    )
    public var parent: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A file whose first line is the parents' password (instead of one in the URL, where `ps` shows it).",
            valueName: "file"
        )
    )
    public var parentPasswordFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp("An environment variable holding the parents' password.", valueName: "name")
    )
    public var parentPasswordEnv: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "CA certificates (PEM) that https:// parents' certificates are verified against, instead of the system's.",
            valueName: "file"
        )
    )
    public var parentCacert: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A keytab with the proxy's own client key, for parents that ask for Negotiate (Kerberos); without it, the process's ticket cache (KRB5CCNAME).",
            valueName: "file"
        )
    )
    public var parentKeytab: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Schemes a parent's 407 may be answered with: any, or a comma-separated list of basic, digest, ntlm, negotiate. any picks the strongest the parent offers. (default: any)",
            valueName: "list"
        )
    )
    public var parentAuth: CommaList?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Hosts reached directly even with --parent, comma-separated: names (exactly), *.suffix (subdomains), IP addresses and CIDR blocks (matched against literal addresses).",
            valueName: "list"
        )
    )
    public var directFor: CommaList?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A routing rule, PATTERNS=VIA (repeatable, first match wins, after --direct-for): host patterns as in --direct-for, then direct or one --parent's host[:port]. Hosts no rule matches go through the parents in order.",
            valueName: "rule"
        ),
        transform: { try RouteRule(argument: $0) }
    )
    public var routes: [RouteRule] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A directory to check Basic passwords against after the local users: ldap://HOST[:PORT] (StartTLS) or ldaps://; repeatable (failover in order).",
            valueName: "url"
        )
    )
    public var ldap: [String] = []

    @Option(name: .long, help: ArgumentHelp("The DN users are searched under.", valueName: "dn"))
    public var ldapBase: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "openldap, or ad: users by sAMAccountName or userPrincipalName, named by sAMAccountName, nested groups (LDAP_MATCHING_RULE_IN_CHAIN). --ldap-user-filter still wins. (default: openldap)",
            valueName: "name"
        )
    )
    public var ldapPreset: String?

    @Option(
        name: .long,
        help: ArgumentHelp("The service account that searches for users (else an anonymous search).", valueName: "dn")
    )
    public var ldapBindDn: String?

    @Option(
        name: .long,
        help: ArgumentHelp("A file whose first line is --ldap-bind-dn's password.", valueName: "file")
    )
    public var ldapBindPasswordFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The search for a user, %s the escaped name. (default: (&(objectClass=person)(uid=%s)))",
            valueName: "filter"
        )
    )
    public var ldapUserFilter: String?

    @Option(
        name: .long,
        help: ArgumentHelp("CA certificates (PEM) the directory's certificate is verified against.", valueName: "file")
    )
    public var ldapCa: String?

    @Flag(
        inversion: .prefixedNo,
        help: "StartTLS on ldap:// URLs: binds carry passwords. (default: on)"
    )
    public var ldapStarttls: Bool?

    @Flag(
        inversion: .prefixedNo,
        help: "Ask the directory before the local users. (default: the local users first)"
    )
    public var ldapFirst: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The attribute of a user's entry listing its groups' DNs; a group counts in --policy under its DN and its first RDN's value (cn=staff,… is staff). (default: memberOf)",
            valueName: "name"
        )
    )
    public var ldapGroupAttribute: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A search for the user's groups by membership, %d the user's DN: (&(objectClass=groupOfNames)(member=%d)). Its groups count with --ldap-group-attribute's.",
            valueName: "filter"
        )
    )
    public var ldapGroupFilter: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a user's directory groups (read at the login, or looked up when a rule needs them) count for the access rules before they are looked up again. (default: 300)",
            valueName: "seconds"
        )
    )
    public var ldapGroupCacheTTL: Seconds?

    @Flag(inversion: .prefixedNo, help: "Allow --auth none on a non-loopback listener.")
    public var allowOpenProxy: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "trace, debug, info, notice, warning, error or critical. (default: info)",
            valueName: "level"
        )
    )
    public var logLevel: String?

    @Option(name: .long, help: ArgumentHelp("Where the embedded users file lives.", valueName: "dir"))
    public var dataDir: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds to connect to an origin before 504. (default: 10)", valueName: "seconds")
    )
    public var upstreamConnectTimeout: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds to wait for an origin's response head before 504. (default: 60)",
            valueName: "seconds"
        )
    )
    public var upstreamResponseTimeout: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds a CONNECT tunnel may stay silent. (default: 600)", valueName: "seconds")
    )
    public var tunnelIdleTimeout: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds an idle keep-alive client connection is kept. (default: 60)", valueName: "seconds")
    )
    public var clientIdleTimeout: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds from the first byte of a request head to its end; then 408 and close. (default: 30)",
            valueName: "seconds"
        )
    )
    public var requestHeadTimeout: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a request body may stall (no bytes arriving); then 408 and close. (default: 30)",
            valueName: "seconds"
        )
    )
    public var requestBodyTimeout: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Failed logins from one address within --lockout-window that lock it out. (default: 10)",
            valueName: "count"
        )
    )
    public var lockoutThreshold: Count?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds in which failed logins are counted. (default: 300)", valueName: "seconds")
    )
    public var lockoutWindow: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Client addresses allowed to connect: comma-separated IPs or CIDR blocks. (default: any)",
            valueName: "list"
        )
    )
    public var allowClients: CommaList?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "YAML file of access rules by user/group over hosts, ports and methods; re-read on change and SIGHUP.",
            valueName: "file"
        )
    )
    public var policy: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "PAC file served at /proxy.pac and /wpad.dat on the proxy's listeners, without credentials; checked before it is served, re-read on change and SIGHUP (a bad file keeps the previous one).",
            valueName: "file"
        )
    )
    public var pac: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The longest lifetime of a token issued through the admin listener's POST /v1/tokens. (default: 24h)",
            valueName: "duration"
        )
    )
    public var tokenMaxTtl: DurationText?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Credentials (passwords, tokens) that end within this are warned about: a Proxy-Status hint on their responses, a log warning a day, the expiring state in portcullis_users. (default: 7d)",
            valueName: "duration"
        )
    )
    public var expiryWarning: DurationText?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Serve /metrics, /healthz and /readyz here (loopback unless --allow-remote-admin). (default: off)",
            valueName: "host:port"
        )
    )
    public var admin: String?

    @Flag(inversion: .prefixedNo, help: "Allow --admin on a non-loopback address.")
    public var allowRemoteAdmin: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Write one line per request or tunnel here ('-' for stdout); reopened on SIGHUP/SIGUSR1.",
            valueName: "path"
        )
    )
    public var accessLog: String?

    @Option(
        name: .long,
        help: ArgumentHelp("squid (Squid's native format) or json. (default: squid)", valueName: "format")
    )
    public var accessLogFormat: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Largest request body accepted, in bytes; larger gets 413. (default: no limit)",
            valueName: "bytes"
        )
    )
    public var maxRequestBody: ByteCount?

    @Option(
        name: .long,
        help: ArgumentHelp("Connections one user may have open at once; more get 429.", valueName: "n")
    )
    public var userMaxConnections: Count?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Distinct client addresses one user may come from within --user-address-window.",
            valueName: "n"
        )
    )
    public var userMaxAddresses: Count?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds an address counts towards --user-max-addresses. (default: 60)",
            valueName: "seconds"
        )
    )
    public var userAddressWindow: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Requests per second one user may send (bursts of twice that); more get 429.",
            valueName: "rate"
        )
    )
    public var userMaxRate: RequestRate?

    @Option(name: .long, help: ArgumentHelp("Most client connections at once. (default: 10000)", valueName: "n"))
    public var maxConnections: Count?

    @Option(
        name: .long,
        help: ArgumentHelp("Most connections at once from one client address. (default: 512)", valueName: "n")
    )
    public var maxClientConnections: Count?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds a locked-out address is refused (429). (default: 300)", valueName: "seconds")
    )
    public var lockoutDuration: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds a successful password check is remembered. (default: 300)", valueName: "seconds")
    )
    public var credentialCacheTTL: Seconds?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds in-flight requests get to finish on SIGTERM/SIGINT; a second signal closes them at once. (default: 10)",
            valueName: "seconds"
        )
    )
    public var shutdownGrace: Seconds?

    /// Settings a connection reads for itself when it starts, so a reloaded file can put them in
    /// force for new connections; the others need a restart (listeners, stores, schemes, and the
    /// throttle and limits, whose objects keep state).
    private static let reloadable: Set<CodingKeys> = [
        .allowPrivateDestinations, .connectPorts, .upstreamConnectTimeout, .upstreamResponseTimeout,
        .tunnelIdleTimeout, .clientIdleTimeout, .requestHeadTimeout, .requestBodyTimeout, .maxRequestBody,
    ]

    public static let reloadableKeys = Set(Self.reloadable.map { Self.settingKey($0.stringValue) })
}

/// A configuration or start-up error, with a message a user can act on.
public struct ServeError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { self.message }
}
