// Exercises the real plugin and creator classes on the CPU, without libnvinfer or a GPU:
// field tables vs the generated header, field parsing and rejection, the serialization round
// trip through the creator, clone, capabilities, type/format/shape rules, workspace, and that a
// launcher error comes back from enqueue as a non-zero code. Prints one line per failed check.
// Built without static registration (it is opt-in and needs libnvinfer).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "lnDeployNormPlugin.h"

using namespace nvinfer1;
using namespace ln_deploy::plugin;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{
int gFailures = 0;
int gChecks = 0;

void check(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

// A builder our shape rule must not need: outputs copy x's dimension expressions.
class UnusedExprBuilder : public IExprBuilder
{
public:
    UnusedExprBuilder() { mImpl = nullptr; }
};

struct Fields
{
    std::vector<PluginField> list;
    std::vector<int32_t> ints;
    std::vector<float> floats;
    Fields()
    {
        ints.reserve(16);
        floats.reserve(16);
    }
    void addInt(char const* name, int32_t v)
    {
        ints.push_back(v);
        list.emplace_back(name, &ints.back(), PluginFieldType::kINT32, 1);
    }
    void addFloat(char const* name, float v)
    {
        floats.push_back(v);
        list.emplace_back(name, &floats.back(), PluginFieldType::kFLOAT32, 1);
    }
    PluginFieldCollection fc() const { return PluginFieldCollection{static_cast<int32_t>(list.size()), list.data()}; }
};

DynamicPluginTensorDesc desc(DataType t, std::vector<int64_t> const& dims, TensorFormat f = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = f;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
        d.desc.dims.d[i] = dims[i];
    d.min = d.max = d.opt = d.desc.dims;
    return d;
}

IPluginCreatorV3One* creatorNamed(char const* name)
{
    int32_t n = 0;
    IPluginCreatorInterface* const* list = getCreators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
        if (std::strcmp(c->getPluginName(), name) == 0)
            return c;
    }
    return nullptr;
}
} // namespace

int main()
{
    // -- creators and their field tables
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(nbCreators == 2 && creators != nullptr, "getCreators returns two creators");
    for (int32_t i = 0; i < nbCreators; ++i)
        check(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
            "creators are IPluginCreatorV3One");
    IPluginCreatorV3One* norm = creatorNamed(ln_deploy::kNormPluginName);
    IPluginCreatorV3One* skip = creatorNamed(ln_deploy::kSkipNormPluginName);
    check(norm != nullptr && skip != nullptr, "creators named LnDeployNorm and LnDeploySkipNorm");
    if (norm == nullptr || skip == nullptr)
        return 1;
    check(std::strcmp(norm->getPluginVersion(), ln_deploy::kPluginVersion) == 0, "version from the spec");
    check(std::strcmp(norm->getPluginNamespace(), ln_deploy::kPluginNamespace) == 0, "namespace from the spec");
    // The same names, order and types as the generated header's X-macros.
    std::vector<std::pair<std::string, PluginFieldType>> expectNorm, expectSkip;
#define LN_EXPECT(name, type, def)                                                                                     \
    expect.emplace_back(#name, std::string(#type) == "int32" ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32);
    {
        auto& expect = expectNorm;
        LN_DEPLOY_NORM_FIELDS(LN_EXPECT)
    }
    {
        auto& expect = expectSkip;
        LN_DEPLOY_SKIPNORM_FIELDS(LN_EXPECT)
    }
#undef LN_EXPECT
    for (auto const& [creator, expect] : {std::make_pair(norm, expectNorm), std::make_pair(skip, expectSkip)})
    {
        PluginFieldCollection const* fc = creator->getFieldNames();
        check(fc != nullptr && fc->nbFields == static_cast<int32_t>(expect.size()),
            std::string(creator->getPluginName()) + ": field count");
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields && i < static_cast<int32_t>(expect.size()); ++i)
            check(expect[i].first == fc->fields[i].name && expect[i].second == fc->fields[i].type,
                std::string(creator->getPluginName()) + ": field " + expect[i].first);
    }

    // -- defaults, then every field set to a non-default value and round-tripped
    {
        std::unique_ptr<IPluginV3> p(norm->createPlugin("n", nullptr, TensorRTPhase::kBUILD));
        check(p != nullptr, "createPlugin with no fields uses the defaults");
        auto* impl = dynamic_cast<LnDeployNormPlugin*>(p.get());
        check(impl != nullptr && impl->fields().kind == 0 && impl->fields().epsilon == 1e-5f
                && impl->fields().num_normalized_dims == 1 && impl->fields().batch_invariant == 1,
            "defaults match plugin_spec");
    }
    Fields f;
    f.addInt("kind", 1);
    f.addFloat("epsilon", 1e-6f);
    f.addInt("num_normalized_dims", 2);
    f.addInt("batch_invariant", 0);
    f.addInt("output_sum", 1);
    PluginFieldCollection fc = f.fc();
    std::unique_ptr<IPluginV3> sp(skip->createPlugin("s", &fc, TensorRTPhase::kBUILD));
    check(sp != nullptr, "SkipNorm createPlugin with every field");
    if (!sp)
        return 1;
    auto* core = static_cast<IPluginV3OneCore*>(sp->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(sp->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(sp->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core != nullptr && build != nullptr && rt != nullptr, "all three capabilities");
    check(std::strcmp(core->getPluginName(), "LnDeploySkipNorm") == 0, "plugin name");
    check(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build capability kind");
    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    check(ser != nullptr && ser->nbFields == 5, "serializes all five SkipNorm fields");
    std::unique_ptr<IPluginV3> back(skip->createPlugin("s", ser, TensorRTPhase::kRUNTIME));
    auto* b = dynamic_cast<LnDeployNormPlugin*>(back.get());
    check(b != nullptr && b->fields().kind == 1 && b->fields().epsilon == 1e-6f && b->fields().num_normalized_dims == 2
            && b->fields().batch_invariant == 0 && b->fields().output_sum == 1,
        "fields survive getFieldsToSerialize -> createPlugin(kRUNTIME)");
    std::unique_ptr<IPluginV3> cl(sp->clone());
    auto* c = dynamic_cast<LnDeployNormPlugin*>(cl.get());
    check(c != nullptr && std::memcmp(&c->fields(), &dynamic_cast<LnDeployNormPlugin*>(sp.get())->fields(),
                              sizeof(NormFields)) == 0,
        "clone keeps the fields");
    sp.reset(); // the clone must not point into the original
    PluginFieldCollection const* serClone
        = static_cast<IPluginV3OneRuntime*>(cl->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
              ->getFieldsToSerialize();
    check(serClone != nullptr && serClone->nbFields == 5 && *static_cast<float const*>(serClone->fields[1].data) == 1e-6f,
        "clone serializes its own copy after the original is gone");

    // -- rejected fields
    auto rejects = [&](IPluginCreatorV3One* cr, Fields const& bad, char const* what) {
        PluginFieldCollection bfc = bad.fc();
        std::unique_ptr<IPluginV3> p(cr->createPlugin("bad", &bfc, TensorRTPhase::kBUILD));
        check(p == nullptr, std::string("rejects ") + what);
    };
    { Fields bad; bad.addInt("kind", 2); rejects(norm, bad, "kind 2"); }
    { Fields bad; bad.addFloat("epsilon", -1.0f); rejects(norm, bad, "negative epsilon"); }
    { Fields bad; bad.addFloat("epsilon", NAN); rejects(norm, bad, "NaN epsilon"); }
    { Fields bad; bad.addInt("epsilon", 1); rejects(norm, bad, "epsilon given as int32"); }
    { Fields bad; bad.addInt("num_normalized_dims", 0); rejects(norm, bad, "num_normalized_dims 0"); }
    { Fields bad; bad.addInt("batch_invariant", 2); rejects(norm, bad, "batch_invariant 2"); }
    {
        Fields other;
        other.addInt("output_sum", 1); // a SkipNorm field: unknown to LnDeployNorm, so ignored
        PluginFieldCollection ofc = other.fc();
        std::unique_ptr<IPluginV3> p(norm->createPlugin("n", &ofc, TensorRTPhase::kBUILD));
        check(p != nullptr
                && static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD))->getNbOutputs() == 1,
            "output_sum does not give LnDeployNorm a second output");
    }
    {
        Fields extra;
        extra.addInt("some_future_attribute", 3);
        PluginFieldCollection efc = extra.fc();
        std::unique_ptr<IPluginV3> p(norm->createPlugin("x", &efc, TensorRTPhase::kBUILD));
        check(p != nullptr, "ignores an unknown field (the ONNX parser passes every attribute)");
    }

    // -- build rules on an LnDeployNorm with fp16 x, fp32 scale and bias
    std::unique_ptr<IPluginV3> np(norm->createPlugin("n", nullptr, TensorRTPhase::kBUILD));
    auto* nb = static_cast<IPluginV3OneBuild*>(np->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* nr = static_cast<IPluginV3OneRuntime*>(np->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(nb->getNbOutputs() == 1, "LnDeployNorm has one output");
    DataType outT[1];
    DataType inT[3] = {DataType::kBF16, DataType::kFLOAT, DataType::kFLOAT};
    check(nb->getOutputDataTypes(outT, 1, inT, 3) == 0 && outT[0] == DataType::kBF16, "output type follows x");
    DataType intIn[2] = {DataType::kINT32, DataType::kINT32};
    check(nb->getOutputDataTypes(outT, 1, intIn, 2) != 0, "int32 x rejected");
    std::vector<DynamicPluginTensorDesc> io = {desc(DataType::kHALF, {4, 7, 768}), desc(DataType::kFLOAT, {768}),
        desc(DataType::kFLOAT, {768}), desc(DataType::kHALF, {4, 7, 768})};
    check(nb->supportsFormatCombination(0, io.data(), 3, 1), "fp16 x");
    check(nb->supportsFormatCombination(1, io.data(), 3, 1), "fp32 scale with fp16 x");
    check(nb->supportsFormatCombination(2, io.data(), 3, 1), "bias in scale's type");
    check(nb->supportsFormatCombination(3, io.data(), 3, 1), "output in x's type");
    io[2] = desc(DataType::kHALF, {768});
    check(!nb->supportsFormatCombination(2, io.data(), 3, 1), "bias type must equal scale type");
    io[1] = desc(DataType::kBF16, {768});
    check(!nb->supportsFormatCombination(1, io.data(), 3, 1), "bf16 scale with fp16 x rejected");
    io[3] = desc(DataType::kFLOAT, {4, 7, 768});
    check(!nb->supportsFormatCombination(3, io.data(), 3, 1), "fp32 output for fp16 x rejected");
    io[0] = desc(DataType::kHALF, {4, 7, 768}, TensorFormat::kHWC8);
    check(!nb->supportsFormatCombination(0, io.data(), 3, 1), "non-linear format rejected");
    io[0] = desc(DataType::kINT8, {4, 7, 768});
    check(!nb->supportsFormatCombination(0, io.data(), 3, 1), "int8 x rejected");

    // shapes: outputs copy x's expressions (fake, never dereferenced, pointers stand in for them)
    DimsExprs in[2]{};
    in[0].nbDims = 3;
    for (int i = 0; i < 3; ++i)
        in[0].d[i] = reinterpret_cast<IDimensionExpr const*>(static_cast<uintptr_t>(0x1000 + 16 * i));
    in[1].nbDims = 1;
    DimsExprs outE[1]{};
    UnusedExprBuilder eb;
    check(nb->getOutputShapes(in, 2, nullptr, 0, outE, 1, eb) == 0 && outE[0].nbDims == 3 && outE[0].d[2] == in[0].d[2],
        "output shape is x's shape");

    std::vector<DynamicPluginTensorDesc> good = {desc(DataType::kHALF, {4, 7, 768}), desc(DataType::kHALF, {768}),
        desc(DataType::kHALF, {4, 7, 768})};
    check(nb->configurePlugin(good.data(), 2, good.data() + 2, 1) == 0, "configure x [4,7,768], scale [768]");
    std::vector<DynamicPluginTensorDesc> badScale = {desc(DataType::kHALF, {4, 7, 768}), desc(DataType::kHALF, {512}),
        desc(DataType::kHALF, {4, 7, 768})};
    check(nb->configurePlugin(badScale.data(), 2, badScale.data() + 2, 1) != 0, "scale of the wrong size rejected");
    std::vector<DynamicPluginTensorDesc> dyn = {desc(DataType::kHALF, {-1, -1, 768}), desc(DataType::kHALF, {768}),
        desc(DataType::kHALF, {-1, -1, 768})};
    check(nb->configurePlugin(dyn.data(), 2, dyn.data() + 2, 1) == 0, "dynamic batch/sequence accepted");
    check(nb->getWorkspaceSize(good.data(), 2, good.data() + 2, 1) == 0, "no workspace when batch-invariant");

    // -- runtime: shape, then enqueue with null pointers -> the launcher's error comes back
    PluginTensorDesc rin[2] = {good[0].desc, good[1].desc};
    PluginTensorDesc rout[1] = {good[2].desc};
    check(nr->onShapeChange(rin, 2, rout, 1) == 0, "onShapeChange");
    void const* ins[2] = {nullptr, nullptr};
    void* outs[1] = {nullptr};
    int32_t const rc = nr->enqueue(rin, rout, ins, outs, nullptr, nullptr);
    check(rc == LN_ERR_INVALID_ARGUMENT, "enqueue returns the launcher's error code (got " + std::to_string(rc) + ")");
    std::unique_ptr<IPluginV3> attached(nr->attachToContext(nullptr));
    check(attached != nullptr, "attachToContext returns a copy");

    // SkipNorm with output_sum: two outputs, residual must match x, workspace when opt-in split
    Fields f2;
    f2.addInt("output_sum", 1);
    f2.addInt("batch_invariant", 0);
    PluginFieldCollection fc2 = f2.fc();
    std::unique_ptr<IPluginV3> sk(skip->createPlugin("s", &fc2, TensorRTPhase::kBUILD));
    auto* sb = static_cast<IPluginV3OneBuild*>(sk->getCapabilityInterface(PluginCapabilityType::kBUILD));
    check(sb->getNbOutputs() == 2, "SkipNorm with output_sum has two outputs");
    std::vector<DynamicPluginTensorDesc> sio = {desc(DataType::kBF16, {8, 4096}), desc(DataType::kBF16, {8, 4096}),
        desc(DataType::kBF16, {4096}), desc(DataType::kBF16, {8, 4096}), desc(DataType::kBF16, {8, 4096})};
    check(sb->supportsFormatCombination(1, sio.data(), 3, 2), "residual in x's type");
    check(sb->supportsFormatCombination(4, sio.data(), 3, 2), "sum output in x's type");
    check(sb->configurePlugin(sio.data(), 3, sio.data() + 3, 2) == 0, "configure SkipNorm");
    sio[1] = desc(DataType::kBF16, {8, 2048});
    check(sb->configurePlugin(sio.data(), 3, sio.data() + 3, 2) != 0, "residual of another shape rejected");
    check(sb->getWorkspaceSize(sio.data(), 3, sio.data() + 3, 2) == ln_workspace_bytes(0)
            && ln_workspace_bytes(0) > 0,
        "workspace for the opt-in split kernel");

    std::printf("%s: %d checks, %d failed\n", gFailures ? "FAILED" : "PASSED", gChecks, gFailures);
    return gFailures ? 1 : 0;
}
