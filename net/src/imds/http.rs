//! A bounded, incremental HTTP/1.x request parser and the response writer for the metadata
//! service. (Skeleton: filled in by the following commits.)
