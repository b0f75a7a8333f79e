import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The child side of `PACEvaluator`: `portcullis pac evaluate-isolated` reads one request on
/// its standard input, loads the file and answers each URL on its own line of standard output,
/// each step under a fresh CPU-time alarm (`ITIMER_PROF`, whose default action ends the
/// process; the parent reads the signal as the time limit).
public enum PACChild {
    public static func run() -> Int32 {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        setrlimit(Int32(RLIMIT_CORE.rawValue), &limit)
        let input = FileHandle.standardInput.readDataToEndOfFile()
        guard let request = try? JSONDecoder().decode(PACChildRequest.self, from: input) else {
            FileHandle.standardError.write(Data("unreadable request\n".utf8))
            return 2
        }
        if let offset = request.environment.utcOffset {
            // POSIX TZ counts west of Greenwich as positive: UTC+01:00 is "PAC-01:00".
            let sign = offset > 0 ? "-" : "+"
            let magnitude = abs(offset)
            let zone = String(
                format: "PAC%@%02d:%02d:%02d",
                sign,
                magnitude / 3600,
                magnitude % 3600 / 60,
                magnitude % 60
            )
            setenv("TZ", zone, 1)
            tzset()
        }
        let script: PACScript
        do {
            alarm(cpuSeconds: request.cpuLimit)
            script = try PACScript(
                source: request.source,
                filename: request.filename,
                environment: request.environment,
                memoryLimit: request.memoryLimit
            )
            alarm(cpuSeconds: 0)
        } catch {
            alarm(cpuSeconds: 0)
            reply(PACChildReply(loadError: error))
            return 0
        }
        reply(PACChildReply(loaded: true))
        for target in request.targets {
            alarm(cpuSeconds: request.cpuLimit)
            let outcome = script.findProxy(url: target.url, host: target.host, trace: request.trace)
            alarm(cpuSeconds: 0)
            switch outcome {
            case .success(let evaluation): reply(PACChildReply(evaluation: evaluation))
            case .failure(let error):
                reply(PACChildReply(error: error, calls: request.trace ? script.lastCalls : nil))
            }
        }
        return 0
    }

    private static func alarm(cpuSeconds: Double) {
        let whole = Int(cpuSeconds)
        let micro = Int((cpuSeconds - Double(whole)) * 1e6)
        var timer = itimerval(
            it_interval: timeval(tv_sec: 0, tv_usec: 0),
            it_value: timeval(tv_sec: whole, tv_usec: micro)
        )
        setitimer(__itimer_which_t(ITIMER_PROF.rawValue), &timer, nil)
    }

    private static func reply(_ reply: PACChildReply) {
        guard var line = try? JSONEncoder().encode(reply) else { return }
        line.append(UInt8(ascii: "\n"))
        FileHandle.standardOutput.write(line)
    }
}
