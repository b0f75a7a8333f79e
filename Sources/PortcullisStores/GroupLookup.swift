/// Groups a user belongs to outside the policy file (a directory's), for the access rules.
/// Answered from memory: it is asked on an event loop for every request the rules decide.
public protocol GroupLookup: AnyObject, Sendable {
    /// The groups `user` was last seen in, or none when not known (now).
    func groups(of user: String) -> Set<String>
}
