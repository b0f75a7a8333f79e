import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

/// SIGTERM and SIGINT for the whole run of `serve`. The first starts the group's graceful
/// shutdown (the proxy drains for `--shutdown-grace`); a second one while it drains gives up
/// waiting: this service throws ``ForcedShutdown``, the group is cancelled and every connection
/// still open is closed at once.
///
/// The signals are trapped before start-up begins, so one sent while the users store opens or just
/// after the listeners bind still drains instead of killing the process.
struct TerminationSignalService<Signals: AsyncSequence & Sendable>: Service where Signals.Element == UnixSignal {
    let signals: Signals
    let grace: TimeAmount
    let logger: Logger
    /// Starts the group's graceful shutdown.
    let shutDownGracefully: @Sendable () async -> Void

    func run() async throws {
        // This service is the first in the group, so the last one told to shut down: it keeps
        // counting signals while every other service drains and closes.
        try await cancelWhenGracefulShutdown {
            var caught: UnixSignal?
            for try await signal in self.signals {
                guard caught == nil else {
                    self.logger.warning(
                        "second signal: closing every connection now",
                        metadata: ["signal": "\(signal)", "first": "\(caught.map { "\($0)" } ?? "-")"]
                    )
                    throw ForcedShutdown(signal: signal)
                }
                caught = signal
                self.logger.info("shutting down", metadata: ["signal": "\(signal)", "grace": "\(self.grace)"])
                await self.shutDownGracefully()
            }
        }
    }
}

/// A second SIGTERM or SIGINT cut the drain short. Not a failure: the process exits with the
/// shell's code for "ended by this signal" (128 + its number), without an error line.
public struct ForcedShutdown: Error, CustomStringConvertible {
    /// The signal's name, `SIGTERM` or `SIGINT`.
    public let signal: String
    /// 128 + the signal's number: 143 for SIGTERM, 130 for SIGINT.
    public let exitCode: Int32

    init(signal: UnixSignal) {
        self.signal = "\(signal)"
        self.exitCode = 128 + signal.rawValue
    }

    public var description: String { "forced shutdown on a second \(self.signal)" }
}
