//! IMDSv2 session tokens: issued per port, bound to the instance, expiring.
//! (Skeleton: filled in by the following commits.)
