/// Groups a user belongs to outside the policy file (a directory's), for the access rules.
/// Answered from memory: it is asked on an event loop for every request the rules decide.
public protocol GroupLookup: AnyObject, Sendable {
    /// The groups `user` was last seen in, or none when not known (now).
    func groups(of user: String) -> Set<String>
    /// Whether `user`'s groups are known now (an empty set counts: looked up, in none).
    func knowsGroups(of user: String) -> Bool
    /// Looks up the groups of the directory's user `name` and keeps them as `user`'s (a
    /// Kerberos principal is looked up by its local name); unknown users keep an empty set.
    func lookUpGroups(name: String, keptAs user: String) async
}
