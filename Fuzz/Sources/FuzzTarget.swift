import Foundation
import PortcullisProxy

#if FUZZING
    /// libFuzzer's entry point (built by scripts/fuzz.sh with -sanitize=fuzzer -DFUZZING).
    /// `PORTCULLIS_FUZZ_TARGET=connection` fuzzes a whole client connection; otherwise the parsers.
    let fuzzConnection = ProcessInfo.processInfo.environment["PORTCULLIS_FUZZ_TARGET"] == "connection"

    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
        let input = UnsafeRawBufferPointer(start: data, count: size)
        if fuzzConnection {
            FuzzEntry.connection(input)
        } else {
            FuzzEntry.run(input)
        }
        return 0
    }

    // SwiftPM links an executable's entry point as `<module>_main` and aliases `main` to it, so
    // libFuzzer's own main is never used: this one hands over to libFuzzer's driver instead.
    @_silgen_name("LLVMFuzzerRunDriver")
    func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<CInt>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
    ) -> CInt

    @_cdecl("portcullis_fuzz_main")
    public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
        var count = argc
        var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
        return LLVMFuzzerRunDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
    }
#else
    /// Without the fuzzer: replays files and directories of inputs (the committed corpora) through
    /// the same entry points, so every seed also runs in the ordinary test suite.
    @main
    struct Replay {
        static func main() throws {
            var count = 0
            for path in CommandLine.arguments.dropFirst() {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                    FileHandle.standardError.write(Data("no such file: \(path)\n".utf8))
                    exit(2)
                }
                let files =
                    isDirectory.boolValue
                    ? try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { "\(path)/\($0)" }
                    : [path]
                // Seeds of the connection target live in a folder named connection-corpus.
                let connection = URL(fileURLWithPath: path).lastPathComponent.hasPrefix("connection")
                for file in files {
                    let data = try Data(contentsOf: URL(fileURLWithPath: file))
                    data.withUnsafeBytes { connection ? FuzzEntry.connection($0) : FuzzEntry.run($0) }
                    count += 1
                }
            }
            print("replayed \(count) inputs")
        }
    }
#endif
