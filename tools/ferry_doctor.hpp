// SPDX-License-Identifier: Apache-2.0
// `ferry doctor` (tools/ferry_doctor.cpp), called by the ferry command-line tool. Layer: tools/.
#pragma once

namespace ferry::tools {

/// Runs the checks and prints them (one JSON object with `json`); 1 when a check found a
/// problem, 0 otherwise (warnings included).
int doctor_main(bool json);

}  // namespace ferry::tools
