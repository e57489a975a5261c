//! A call's attempts: each a request, copied or the original, to a clone of the service,
//! which is polled ready first.

use tower_service::Service;

use crate::Rejected;
use crate::pipeline::Operation;
use crate::tower::attempt::Attempt;
use crate::tower::clones::next_request;
use crate::tower::{CloneRequest, PolicyError};

/// The pipeline's operation for one request.
pub(super) struct Attempts<S, Req, Q> {
    service: S,
    /// The request, until an attempt that no retry could follow (or that could not copy it)
    /// sends it.
    request: Option<Req>,
    clones: Q,
}

impl<S, Req, Q> Attempts<S, Req, Q> {
    pub(super) fn new(service: S, request: Req, clones: Q) -> Self {
        Self {
            service,
            request: Some(request),
            clones,
        }
    }
}

impl<S, Req, Q> Operation for Attempts<S, Req, Q>
where
    S: Service<Req, Error: PolicyError> + Clone,
    Q: CloneRequest<Req>,
{
    type Attempt = Attempt<S, Req>;

    fn attempt(&mut self, retry_possible: impl FnOnce() -> bool) -> Attempt<S, Req> {
        // A copy only for an attempt a retry could follow: the last possible one sends the
        // request itself, as does one whose request cannot be copied (and so is the last).
        let Some(request) = next_request(&self.clones, &mut self.request, retry_possible) else {
            unreachable!("the engine starts no attempt once `repeatable` said no")
        };
        Attempt::Readying {
            service: self.service.clone(),
            req: Some(request),
        }
    }

    fn repeatable(&self) -> bool {
        self.request.is_some()
    }

    /// The refusal of a layer below, if the attempt met one ([`PolicyError::rejection`]).
    fn refused(output: &Result<S::Response, S::Error>) -> Option<Rejected> {
        output.as_ref().err().and_then(PolicyError::rejection)
    }
}
