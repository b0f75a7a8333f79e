import Logging
import NIOCore
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing
import UnixSignals

@testable import PortcullisServer

@Suite struct TerminationSignalServiceTests {
    /// A service fed by `signals`, which reports each graceful shutdown it starts on `started`.
    private func service(
        _ signals: AsyncStream<UnixSignal>,
        started: AsyncStream<Void>.Continuation
    ) -> TerminationSignalService<AsyncStream<UnixSignal>> {
        TerminationSignalService(signals: signals, grace: .seconds(10), logger: Logger(label: "test")) {
            started.yield()
        }
    }

    @Test func theFirstSignalStartsTheGracefulShutdownAndTheServiceKeepsListening() async throws {
        let (signals, send) = AsyncStream.makeStream(of: UnixSignal.self)
        let (started, startedSink) = AsyncStream.makeStream(of: Void.self)
        try await testGracefulShutdown { trigger in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await self.service(signals, started: startedSink).run() }
                send.yield(.sigterm)
                var starts = started.makeAsyncIterator()
                #expect(await starts.next() != nil)
                // The group tells this service last, once every other one has shut down.
                trigger.triggerGracefulShutdown()
                try await group.waitForAll()
            }
        }
    }

    @Test func aSecondSignalEndsTheDrainWithTheShellsExitCodeForThatSignal() async throws {
        let (signals, send) = AsyncStream.makeStream(of: UnixSignal.self)
        let (_, startedSink) = AsyncStream.makeStream(of: Void.self)
        send.yield(.sigterm)
        send.yield(.sigint)
        await testGracefulShutdown { _ in
            let error = await #expect(throws: ForcedShutdown.self) {
                try await self.service(signals, started: startedSink).run()
            }
            #expect(error?.signal == "SIGINT")
            #expect(error?.exitCode == 130)
        }
    }

    @Test func aSecondSIGTERMExitsWith143() async throws {
        let (signals, send) = AsyncStream.makeStream(of: UnixSignal.self)
        let (_, startedSink) = AsyncStream.makeStream(of: Void.self)
        send.yield(.sigterm)
        send.yield(.sigterm)
        await testGracefulShutdown { _ in
            let error = await #expect(throws: ForcedShutdown.self) {
                try await self.service(signals, started: startedSink).run()
            }
            #expect(error?.exitCode == 143)
        }
    }

    @Test func cancellationEndsTheServiceWithoutAnError() async throws {
        let (signals, _) = AsyncStream.makeStream(of: UnixSignal.self)
        let (_, startedSink) = AsyncStream.makeStream(of: Void.self)
        try await testGracefulShutdown { _ in
            let task = Task { try await self.service(signals, started: startedSink).run() }
            task.cancel()
            try await task.value
        }
    }
}
