//! The request sent for a job: the one place its bytes are put together.

use super::Deliverer;
use crate::job::Job;
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;

impl Deliverer {
    /// Turns a job into the request sent. The caller's headers win over the
    /// ones ffd adds.
    pub fn build_request(&self, job: &Job) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(job.body.clone()));
        *req.method_mut() = job.method.clone();
        *req.uri_mut() = job.uri.clone();
        let headers = req.headers_mut();
        for (name, value) in &job.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(h) = &self.id_header {
            if !headers.contains_key(h) {
                if let Ok(v) = HeaderValue::from_str(&job.id) {
                    headers.insert(h.clone(), v);
                }
            }
        }
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(http::header::USER_AGENT, self.user_agent.clone());
        }
        req
    }
}
