# Copyright 2024 swarmtools authors
# Distributed under the terms of the MIT License

EAPI=8

DESCRIPTION="Example language, new slot"
HOMEPAGE="https://example.invalid/swarmtools"
S="${WORKDIR}"

LICENSE="MIT"
SLOT="2"
KEYWORDS="amd64"
BDEPEND="dev-build/example-make"

src_compile() {
	echo "${CATEGORY}/${PF}" > "${PN}.txt" || die
}

src_install() {
	# ${P} keeps the two example-lang slots from colliding.
	insinto "/usr/share/${P}"
	doins "${PN}.txt"
}
