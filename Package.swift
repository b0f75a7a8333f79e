// swift-tools-version:6.2
import PackageDescription

// One place for dependency versions: these are the versions available offline on the project's machines.
let dependencies: [Package.Dependency] = [
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    // 4.5: CryptoExtras has SHA-512/256 (Digest's SHA-512-256).
    .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.0"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
    .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
]

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOHTTP1", package: "swift-nio"),
    .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
]

let package = Package(
    name: "portcullis",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "portcullis", targets: ["portcullis"])
    ],
    dependencies: dependencies,
    targets: [
        .systemLibrary(name: "CCrypt", path: "Sources/CCrypt", providers: [.apt(["libcrypt-dev"])]),
        .systemLibrary(name: "CGSSAPI", path: "Sources/CGSSAPI", providers: [.apt(["libkrb5-dev"])]),
        .systemLibrary(name: "COpenLDAP", path: "Sources/COpenLDAP", providers: [.apt(["libldap-dev"])]),
        .systemLibrary(name: "CDuktape", path: "Sources/CDuktape", providers: [.apt(["duktape-dev"])]),
        // PAC files: Duktape, and the child process that bounds each evaluation.
        .target(name: "PortcullisPAC", dependencies: ["CDuktape"]),
        .target(
            name: "PortcullisLDAP",
            dependencies: [
                "COpenLDAP",
                "PortcullisStores",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // Negotiate (Kerberos, SPNEGO) through MIT's GSSAPI; its own target so that only what
        // needs Kerberos links it.
        .target(name: "PortcullisKerberos", dependencies: ["CGSSAPI"]),
        .target(
            name: "PortcullisAuth",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "PortcullisStores",
            dependencies: [
                "CCrypt",
                "PortcullisAuth",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ] + nio
        ),
        // The PostgreSQL store in its own target, so postgres-nio stays out of everything else.
        .target(
            name: "PortcullisPostgres",
            dependencies: [
                "PortcullisStores",
                "PortcullisAuth",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ] + nio
        ),
        .target(
            name: "PortcullisProxy",
            dependencies: [
                "PortcullisAuth",
                "PortcullisStores",
                "PortcullisKerberos",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                // The TLS listener (--listen-tls).
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                // For ConnectionHarness: one connection without sockets (tests and the fuzzer).
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ] + nio
        ),
        .target(
            name: "PortcullisServer",
            dependencies: [
                "PortcullisProxy",
                "PortcullisKerberos",
                "PortcullisLDAP",
                "PortcullisStores",
                "PortcullisPostgres",
                // serve --pac: checked before it is served (and its ETag hashed).
                "PortcullisPAC",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Yams", package: "Yams"),
                // ServeOptions: the settings are declared once, as options the CLI parses.
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ] + nio
        ),
        .target(
            name: "PortcullisDoctor",
            dependencies: [
                "PortcullisAuth",
                // doctor --pac: the PAC's choice comes first.
                "PortcullisPAC",
                // The client's side of Negotiate, from the caller's ticket cache.
                "PortcullisKerberos",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ] + nio
        ),
        .executableTarget(
            name: "portcullis",
            dependencies: [
                "PortcullisServer",
                "PortcullisProxy",
                "PortcullisStores",
                "PortcullisPostgres",
                "PortcullisDoctor",
                "PortcullisLDAP",
                "PortcullisPAC",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Built for fuzzing by scripts/fuzz.sh (-sanitize=fuzzer -DFUZZING); in a normal build
        // it replays the committed corpus, so every seed also runs as a regression test.
        .executableTarget(
            name: "portcullis-fuzz",
            dependencies: ["PortcullisProxy", "PortcullisAuth"],
            path: "Fuzz/Sources"
        ),
        .testTarget(name: "PortcullisAuthTests", dependencies: ["PortcullisAuth"]),
        .testTarget(name: "PortcullisKerberosTests", dependencies: ["PortcullisKerberos", "CGSSAPI"]),
        .testTarget(name: "PortcullisLDAPTests", dependencies: ["PortcullisLDAP"]),
        .testTarget(name: "PortcullisPACTests", dependencies: ["PortcullisPAC"]),
        // Both SQL stores: the one contract suite runs against SQLite and PostgreSQL.
        .testTarget(
            name: "PortcullisStoresTests",
            dependencies: [
                "PortcullisStores", "PortcullisPostgres", "PortcullisAuth",
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ] + nio
        ),
        .testTarget(
            name: "PortcullisProxyTests",
            dependencies: [
                "PortcullisProxy",
                // A Digest client (DigestResponder) for the connection tests' nonce answers.
                "PortcullisAuth",
                "PortcullisKerberos",
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ] + nio
        ),
        .testTarget(
            name: "PortcullisServerTests",
            dependencies: [
                "PortcullisServer", "PortcullisProxy",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ] + nio
        ),
        .testTarget(
            name: "PortcullisDoctorTests",
            dependencies: ["PortcullisDoctor", "PortcullisAuth", "PortcullisKerberos"] + nio
        ),
    ],
    swiftLanguageModes: [.v6]
)

// A new warning fails the build (debug and release alike): CI builds from a clean tree, so none
// can hide in a cached object file.
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + [.treatAllWarnings(as: .error)]
}
