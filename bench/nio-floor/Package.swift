// swift-tools-version:6.0
// The floor under any SwiftNIO proxy on this machine: a plain TCP relay, one upstream connection
// per client connection, bytes copied both ways with back-pressure and nothing else (no HTTP
// parsing, no authentication). bench/floor.py measures it side by side with Portcullis and
// HAProxy; see bench/RESULTS.md. Not part of the product or of CI.
import PackageDescription

let package = Package(
    name: "nio-floor",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.2")
    ],
    targets: [
        .executableTarget(
            name: "nio-floor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        )
    ],
    swiftLanguageModes: [.v5]
)
