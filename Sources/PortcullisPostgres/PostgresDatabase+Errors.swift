import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisStores
import PostgresNIO

extension PostgresDatabase {
    /// No answer from the database within the deadline.
    struct TimedOut: Error, CustomStringConvertible {
        var timeout: TimeAmount
        var description: String { "no answer within \(self.timeout.nanoseconds / 1_000_000_000) s" }
    }

    /// Waits for `body` at most `timeout`, then throws ``TimedOut``.
    ///
    /// Not a task group: a group waits for its children, and postgres-nio does not give up on a
    /// query that a silent server never answers. `body` runs in a task of its own, which is
    /// cancelled and left to end by itself (cancelling also ends its wait for a pooled
    /// connection); the caller goes on at once.
    static func withDeadline<T: Sendable>(
        _ timeout: TimeAmount,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let race = DeadlineRace<T>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                race.start(continuation, timeout: timeout, body)
            }
        } onCancel: {
            race.finish(.failure(CancellationError()))
        }
    }

    /// Errors that mean "the database is not there" rather than "this query is wrong".
    static func isConnectionProblem(_ error: any Error) -> Bool {
        switch error {
        case is TimedOut:
            return true
        case let error as PSQLError:
            switch error.code {
            case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed,
                .queryCancelled:
                return true
            case .server:
                // Class 08 (connection exception), 57P0x (shut down, cannot connect now), 53 (resources).
                let state = error.serverInfo?[.sqlState] ?? ""
                return state.hasPrefix("08") || state.hasPrefix("57P") || state.hasPrefix("53")
            default:
                return false
            }
        default:
            // postgres-nio's pool reports "cannot connect" with its own error type, which it
            // does not export.
            return String(describing: type(of: error)).contains("ConnectionPoolError")
        }
    }

    /// One line for a message: never the URL, never a password (postgres-nio's own
    /// descriptions are deliberately generic, so the useful part is dug out here).
    static func describe(_ error: any Error) -> String {
        switch error {
        case let error as TimedOut:
            return error.description
        case let error as StoreError:
            return error.message
        case let error as PSQLError:
            if let message = error.serverInfo?[.message] { return message }
            if let underlying = error.underlying { return Self.describe(underlying) }
            switch error.code {
            case .serverClosedConnection: return "the server closed the connection"
            case .clientClosedConnection, .uncleanShutdown: return "the connection was closed"
            case .poolClosed: return "the store is closed"
            case .queryCancelled: return "the query was cancelled"
            default: return "database error \(error.code)"
            }
        case let error as NIOConnectionError:
            if let first = error.connectionErrors.first { return Self.describe(first.error) }
            return "cannot resolve \(error.host)"
        case let error as IOError:
            return String(cString: strerror(error.errnoCode)).lowercased()
        case let error as ChannelError:
            if case .connectTimeout = error { return "connecting timed out" }
            return "\(error)"
        case let error as PostgresDecodingError:
            return "unexpected data in column \(error.columnName) (is this a portcullis database?)"
        default:
            if Self.isConnectionProblem(error) { return "cannot connect (retrying)" }
            return "\(error)"
        }
    }
}

/// The work and the deadline of ``PostgresDatabase/withDeadline(_:_:)``: whichever ends first
/// resumes the caller and cancels the other.
private final class DeadlineRace<T: Sendable>: Sendable {
    private struct State: Sendable {
        var continuation: CheckedContinuation<T, any Error>?
        var finished = false
        var work: Task<Void, Never>?
        var timer: Scheduled<Void>?
    }

    private let state = NIOLockedValueBox(State())

    func start(
        _ continuation: CheckedContinuation<T, any Error>,
        timeout: TimeAmount,
        _ body: @escaping @Sendable () async throws -> T
    ) {
        let cancelledAlready = self.state.withLockedValue { state in
            if !state.finished { state.continuation = continuation }
            return state.finished
        }
        if cancelledAlready { return continuation.resume(throwing: CancellationError()) }
        let work = Task {
            do {
                self.finish(.success(try await body()))
            } catch {
                self.finish(.failure(error))
            }
        }
        let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: timeout) {
            self.finish(.failure(PostgresDatabase.TimedOut(timeout: timeout)))
        }
        let finishedAlready = self.state.withLockedValue { state in
            if !state.finished { (state.work, state.timer) = (work, timer) }
            return state.finished
        }
        if finishedAlready {
            work.cancel()
            timer.cancel()
        }
    }

    func finish(_ result: Result<T, any Error>) {
        let taken = self.state.withLockedValue { state -> State? in
            guard !state.finished else { return nil }
            defer { state = State(finished: true) }
            return state
        }
        guard let taken else { return }
        taken.continuation?.resume(with: result)
        taken.work?.cancel()
        taken.timer?.cancel()
    }
}
