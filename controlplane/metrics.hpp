// The Prometheus text exposition (format 0.0.4) of sluiced's counters: the
// same numbers as `sluicectl stats --json`, rendered from that JSON so the
// two can never disagree.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace sluice {

std::string prometheus_text(const nlohmann::json& stats);

// Answers one HTTP request on an accepted connection: GET /metrics gets the
// text, anything else 404. Never throws.
void serve_metrics(int fd, const nlohmann::json& stats);

}  // namespace sluice
